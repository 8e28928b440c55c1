//! Read connections, each on a thread of its own beside the writer (WAL lets them read while
//! it writes).
//!
//! A read is a closure sent to the threads of a group; the first idle one runs it on its
//! connection and sends the answer back. The connections never leave their threads, so a
//! caller whose future is dropped (a client hung up, a timeout fired) costs nothing: the read
//! finishes and its answer is dropped. And the threads are the store's own, not the runtime's
//! shared pool of blocking threads: whatever else blocks there (name lookups of callback
//! hosts that never answer), reads, the dispatcher's look at the queue and the health check
//! still run. Each group has its own queue, so clients reading long lists delay neither the
//! dispatcher nor `/healthz`.

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, InterruptHandle};
use tokio::sync::{mpsc, oneshot};

use crate::store::{STATEMENT_TIMEOUT, StoreError, StoreResult};

/// A read waiting for a connection.
type Read = Box<dyn FnOnce(&Connection) + Send>;

/// What a group's threads take from its queue.
enum Task {
    Read(Read),
    /// Close the connection and end the thread.
    Stop,
}

/// Interrupts the read its slot names, if it is still running.
struct InterruptWhenDropped(Arc<Mutex<Option<InterruptHandle>>>);

impl Drop for InterruptWhenDropped {
    fn drop(&mut self) {
        if let Some(handle) = lock(&self.0).as_ref() {
            handle.interrupt();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ends a read transaction a read left open. A read's transaction is rolled back when it is
/// dropped, but an interrupt meant for the read can land on that `ROLLBACK` and fail it
/// unseen; the connection would then keep its snapshot for good, every later read on it
/// would see the past, and the writer's checkpoints could never pass it. Here no interrupt
/// can reach the connection any more.
fn end_open_transaction(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(err) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %err, "a read connection could not end its transaction");
    }
}

/// Reads queued per connection of a group before callers wait to queue more.
const QUEUED_PER_CONNECTION: usize = 64;

/// A group of read connections, each on its own thread, sharing one queue. Its threads end
/// on [`Readers::close`], or once every clone is dropped.
#[derive(Clone)]
pub(super) struct Readers {
    reads: mpsc::Sender<Task>,
    connections: usize,
    busy: Arc<AtomicUsize>,
    /// One per thread, answered once it has closed its connection and let go of the lock.
    ended: Arc<Mutex<Vec<oneshot::Receiver<()>>>>,
}

impl Readers {
    /// Starts a thread named `name-N` for each of `connections`. Each thread holds `lock`
    /// (the database's lock file) until it has closed its connection: closing the lock's
    /// descriptor first would drop SQLite's own locks on the file (see
    /// `open::lock_database`).
    pub(super) fn start(
        name: &str,
        connections: Vec<Connection>,
        lock: &Arc<File>,
    ) -> StoreResult<Self> {
        let count = connections.len();
        let (reads, queue) = mpsc::channel::<Task>(QUEUED_PER_CONNECTION * count.max(1));
        let queue = Arc::new(Mutex::new(queue));
        let busy = Arc::new(AtomicUsize::new(0));
        let mut ended = Vec::with_capacity(count);
        for (n, conn) in connections.into_iter().enumerate() {
            let queue = Arc::clone(&queue);
            let busy = Arc::clone(&busy);
            let lock = Arc::clone(lock);
            let (end, ended_rx) = oneshot::channel::<()>();
            ended.push(ended_rx);
            std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    loop {
                        // One idle thread waits on the queue at a time; the others wait for it
                        // to take a read and let go.
                        let next = queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .blocking_recv();
                        let Some(Task::Read(read)) = next else {
                            // Stopped, or the store is gone.
                            drop(conn);
                            drop(lock);
                            let _ = end.send(());
                            return;
                        };
                        busy.fetch_add(1, Ordering::Relaxed);
                        read(&conn);
                        end_open_transaction(&conn);
                        busy.fetch_sub(1, Ordering::Relaxed);
                    }
                })
                .map_err(|e| StoreError::Open(format!("cannot start the {name} thread: {e}")))?;
        }
        Ok(Self {
            reads,
            connections: count,
            busy,
            ended: Arc::new(Mutex::new(ended)),
        })
    }

    /// Runs `f` on the first idle connection of the group and answers what it returned. A
    /// read whose caller stops waiting (gone, or past [`STATEMENT_TIMEOUT`]) is interrupted,
    /// or never started if it is still queued: a client asking for a page a million rows
    /// deep and hanging up does not hold a connection for the walk.
    pub(super) async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let running = Arc::new(Mutex::new(None::<InterruptHandle>));
        let interrupt = InterruptWhenDropped(Arc::clone(&running));
        let read: Read = Box::new(move |conn| {
            if answer.is_closed() {
                return;
            }
            *lock(&running) = Some(conn.get_interrupt_handle());
            let result = f(conn);
            // Cleared before the connection takes another read, so that an interrupt meant
            // for this one can never reach the next.
            *lock(&running) = None;
            let _ = answer.send(result);
        });
        self.reads
            .send(Task::Read(read))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        let answer = tokio::time::timeout(STATEMENT_TIMEOUT, answered).await;
        drop(interrupt);
        match answer {
            Ok(answer) => Ok(answer.map_err(|_| StoreError::WriterGone)??),
            Err(_) => Err(StoreError::Unavailable(format!(
                "a read was not answered within {} s (stopped)",
                STATEMENT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Lets the reads queued before it finish, then closes every connection of the group and
    /// answers once all its threads have let go of the database (so it can be opened again at
    /// once). Reads after it fail.
    pub(super) async fn close(&self) {
        for _ in 0..self.connections {
            if self.reads.send(Task::Stop).await.is_err() {
                break;
            }
        }
        let ended = std::mem::take(
            &mut *self
                .ended
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for thread in ended {
            // An error means the thread is gone already.
            let _ = thread.await;
        }
    }

    /// Connections running a read now, and idle ones.
    pub(super) fn usage(&self) -> (usize, usize) {
        let busy = self.busy.load(Ordering::Relaxed).min(self.connections);
        (busy, self.connections - busy)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A statement that runs for minutes unless interrupted.
    const ENDLESS: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)
                           SELECT count(*) FROM n";

    /// A read whose caller hangs up is interrupted: the group's one connection is free for
    /// the next read at once, not after the walk.
    #[tokio::test]
    async fn a_read_whose_caller_is_gone_is_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let lock = Arc::new(File::create(dir.path().join("lock")).unwrap());
        let conn = Connection::open(dir.path().join("db")).unwrap();
        let readers = Readers::start("test-reader", vec![conn], &lock).unwrap();

        let endless = tokio::spawn({
            let readers = readers.clone();
            async move {
                readers
                    .run(|conn| conn.query_row(ENDLESS, [], |row| row.get::<_, i64>(0)))
                    .await
            }
        });
        // Under way on the group's one connection, then its caller hangs up.
        let deadline = Instant::now() + Duration::from_secs(10);
        while readers.usage().0 == 0 {
            assert!(Instant::now() < deadline, "the endless read never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        endless.abort();

        let started = Instant::now();
        let next = readers.run(|conn| conn.query_row("SELECT 42", [], |row| row.get::<_, i64>(0)));
        let answer = tokio::time::timeout(Duration::from_secs(10), next).await;
        assert_eq!(answer.expect("the connection was freed").unwrap(), 42);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        readers.close().await;
    }

    /// A read that leaves its transaction open (as a `ROLLBACK` failed by a late interrupt
    /// does) hands the next read a connection in autocommit, reading the present: a row
    /// written after the first read's snapshot is seen.
    #[tokio::test]
    async fn a_transaction_a_read_left_open_is_ended() {
        let dir = tempfile::tempdir().unwrap();
        let lock = Arc::new(File::create(dir.path().join("lock")).unwrap());
        let path = dir.path().join("db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1)",
            )
            .unwrap();
        let readers =
            Readers::start("test-reader", vec![Connection::open(&path).unwrap()], &lock).unwrap();

        let left_open = readers
            .run(|conn| {
                conn.execute_batch("BEGIN")?;
                conn.query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0))
            })
            .await
            .unwrap();
        assert_eq!(left_open, 1);
        writer.execute("INSERT INTO t VALUES (2)", []).unwrap();

        let next = readers
            .run(|conn| {
                let count =
                    conn.query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0))?;
                Ok((conn.is_autocommit(), count))
            })
            .await
            .unwrap();
        assert_eq!(
            next,
            (true, 2),
            "the next read saw the first one's snapshot"
        );
        readers.close().await;
    }
}
