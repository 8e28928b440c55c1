//! Group commit for a database that takes each statement from a connection of a pool
//! (PostgreSQL): many callers' writes of one kind become one multi-row statement and one
//! commit.
//!
//! A write costs a round trip, a statement and a commit whether it carries one row or a
//! hundred, and under load those, not the rows, are what the database and this process spend
//! their time on. So callers hand their write to a [`GroupCommit`] and wait; a task takes
//! every write waiting, runs them as one statement, and answers each caller only after that
//! statement's commit. While [`GroupCommit::start`]'s `in_flight` statements run, new writes
//! wait and form the next, larger batch: the busier the database, the bigger the batches,
//! with no timer and no added latency when it is idle.
//!
//! A write handed over stands even if its caller stops waiting (a client hung up): it is
//! part of a statement other callers wait for, and the callers above are written for a
//! write that may have committed. If a batch's statement fails for a reason the database
//! does not attribute to the batch as a whole (one row it refuses), each write is tried
//! again alone, so one bad row cannot fail the others.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{StoreError, StoreResult};

/// Writes waiting for a batch; callers wait for room when it is full (backpressure).
const QUEUE: usize = 8192;

/// Runs one batch: one result per write, in the writes' order, or an error for the batch.
pub(crate) trait RunBatch<T>: Send + Sync + 'static {
    type Output: Send + 'static;
    fn run(&self, batch: &[T]) -> impl Future<Output = StoreResult<Vec<Self::Output>>> + Send;
}

/// Writes of one kind, batched. Cheap to clone; the batching task ends when every clone is
/// gone.
pub(crate) struct GroupCommit<T, R> {
    sender: mpsc::Sender<Pending<T, R>>,
}

impl<T, R> Clone for GroupCommit<T, R> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
        }
    }
}

struct Pending<T, R> {
    write: T,
    reply: oneshot::Sender<StoreResult<R>>,
}

impl<T, R> GroupCommit<T, R>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
{
    /// Starts the batching task: batches of at most `max_batch` writes, at most `in_flight`
    /// of them running at once (each holds a connection while it runs).
    pub fn start<B>(runner: B, max_batch: usize, in_flight: usize) -> Self
    where
        B: RunBatch<T, Output = R>,
    {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(batch_loop(
            Arc::new(runner),
            receiver,
            max_batch.max(1),
            in_flight.max(1),
        ));
        Self { sender }
    }

    /// Hands `write` over and waits until its batch has committed.
    pub async fn write(&self, write: T) -> StoreResult<R> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Pending { write, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

async fn batch_loop<T, R, B>(
    runner: Arc<B>,
    mut receiver: mpsc::Receiver<Pending<T, R>>,
    max_batch: usize,
    in_flight: usize,
) where
    T: Send + Sync + 'static,
    R: Send + 'static,
    B: RunBatch<T, Output = R>,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = receiver.recv().await {
        // Waiting for a slot before gathering is what lets a batch grow while the database
        // is busy with the ones before it.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch.min(64));
        batch.push(first);
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let runner = Arc::clone(&runner);
        tokio::spawn(async move {
            run_and_answer(&*runner, batch).await;
            drop(slot);
        });
    }
}

async fn run_and_answer<T, R, B>(runner: &B, batch: Vec<Pending<T, R>>)
where
    B: RunBatch<T, Output = R>,
{
    let (writes, replies): (Vec<T>, Vec<_>) = batch.into_iter().map(|p| (p.write, p.reply)).unzip();
    match runner.run(&writes).await {
        Ok(results) if results.len() == writes.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                // The caller may have gone; the write stands regardless.
                let _ = reply.send(Ok(result));
            }
        }
        Ok(results) => {
            let got = results.len();
            tracing::error!(
                writes = writes.len(),
                got,
                "a batch answered a different number of writes"
            );
            for reply in replies {
                let _ = reply.send(Err(StoreError::WrongReply {
                    expected: "one answer per write",
                    got: "another number of answers",
                }));
            }
        }
        Err(err) if err.is_unavailable() || writes.len() == 1 => {
            // A lone write's error is its own. An outage would fail each write alone the
            // same way, so none is retried: every write hears of it.
            let reason = err.to_string();
            let mut replies = replies.into_iter();
            if let Some(first) = replies.next() {
                let _ = first.send(Err(err));
            }
            for reply in replies {
                let _ = reply.send(Err(StoreError::Unavailable(reason.clone())));
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, size = writes.len(), "batch write failed; retrying writes one by one");
            for (write, reply) in writes.iter().zip(replies) {
                let result = runner
                    .run(std::slice::from_ref(write))
                    .await
                    .and_then(|mut one| {
                        one.pop().ok_or(StoreError::WrongReply {
                            expected: "one answer",
                            got: "none",
                        })
                    });
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// Doubles numbers, one statement per batch, after `delay`; refuses a batch holding a
    /// negative number (as a database refuses a bad row), or answers every batch with
    /// `unavailable` once set.
    #[derive(Default)]
    struct Doubler {
        delay: Duration,
        batches: Mutex<Vec<Vec<i64>>>,
        unavailable: bool,
    }

    impl RunBatch<i64> for Arc<Doubler> {
        type Output = i64;

        async fn run(&self, batch: &[i64]) -> StoreResult<Vec<i64>> {
            tokio::time::sleep(self.delay).await;
            self.batches.lock().unwrap().push(batch.to_vec());
            if self.unavailable {
                return Err(StoreError::Unavailable("the database is restarting".into()));
            }
            if batch.iter().any(|n| *n < 0) {
                return Err(StoreError::Open(format!("refused a row of {batch:?}")));
            }
            Ok(batch.iter().map(|n| n * 2).collect())
        }
    }

    async fn write_all(writes: &GroupCommit<i64, i64>, numbers: &[i64]) -> Vec<StoreResult<i64>> {
        futures_util::future::join_all(numbers.iter().map(|n| writes.write(*n))).await
    }

    #[tokio::test]
    async fn writes_arriving_while_a_batch_runs_share_the_next_one_and_each_gets_its_answer() {
        let runner = Arc::new(Doubler {
            delay: Duration::from_millis(50),
            ..Default::default()
        });
        let writes = GroupCommit::start(Arc::clone(&runner), 64, 1);
        let numbers: Vec<i64> = (1..=100).collect();
        let answers = write_all(&writes, &numbers).await;
        for (n, answer) in numbers.iter().zip(answers) {
            assert_eq!(answer.unwrap(), n * 2);
        }
        let batches = runner.batches.lock().unwrap();
        assert!(
            batches.len() <= 3,
            "100 writes at once took {} statements: {batches:?}",
            batches.len()
        );
        assert!(batches.iter().all(|b| b.len() <= 64), "{batches:?}");
    }

    #[tokio::test]
    async fn a_refused_row_fails_only_its_own_write() {
        let runner = Arc::new(Doubler::default());
        let writes = GroupCommit::start(Arc::clone(&runner), 64, 1);
        let answers = write_all(&writes, &[1, 2, -3, 4]).await;
        assert_eq!(answers[0].as_ref().unwrap(), &2);
        assert_eq!(answers[1].as_ref().unwrap(), &4);
        assert!(
            matches!(answers[2], Err(StoreError::Open(_))),
            "{answers:?}"
        );
        assert_eq!(answers[3].as_ref().unwrap(), &8);
    }

    #[tokio::test]
    async fn when_the_database_is_unavailable_every_write_hears_so_without_retrying_each() {
        let runner = Arc::new(Doubler {
            delay: Duration::from_millis(20),
            unavailable: true,
            ..Default::default()
        });
        let writes = GroupCommit::start(Arc::clone(&runner), 64, 1);
        let answers = write_all(&writes, &(1..=50).collect::<Vec<_>>()).await;
        assert!(
            answers
                .iter()
                .all(|a| a.as_ref().is_err_and(StoreError::is_unavailable))
        );
        let statements = runner.batches.lock().unwrap().len();
        assert!(statements <= 3, "{statements} statements for one outage");
    }

    #[tokio::test]
    async fn a_write_whose_caller_stopped_waiting_is_still_made() {
        let runner = Arc::new(Doubler {
            delay: Duration::from_millis(50),
            ..Default::default()
        });
        let writes = GroupCommit::start(Arc::clone(&runner), 64, 1);
        // The caller gives up while its write is in the running batch.
        let gave_up = tokio::time::timeout(Duration::from_millis(10), writes.write(7)).await;
        assert!(gave_up.is_err());
        assert_eq!(writes.write(8).await.unwrap(), 16);
        let batches = runner.batches.lock().unwrap();
        assert!(batches.iter().flatten().any(|n| *n == 7), "{batches:?}");
    }

    #[tokio::test]
    async fn a_batch_answering_the_wrong_number_of_writes_is_an_error_not_a_default() {
        struct Short;
        impl RunBatch<i64> for Short {
            type Output = i64;
            async fn run(&self, _: &[i64]) -> StoreResult<Vec<i64>> {
                Ok(Vec::new())
            }
        }
        let writes = GroupCommit::start(Short, 64, 1);
        assert!(matches!(
            writes.write(1).await,
            Err(StoreError::WrongReply { .. })
        ));
    }
}
