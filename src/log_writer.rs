//! Log lines on their way to stderr: gathered in memory and written by a thread of their own,
//! many at a time.
//!
//! A request never waits on a slow terminal or pipe, and a busy service pays one `write(2)`
//! and one thread wake-up for the lines of a few milliseconds instead of one of each a line
//! (a wake-up a line cost about a twentieth of `POST /sync`'s rate at iterations=1, measured
//! with `bench/profile.sh`). What waits is bounded: past [`MAX_PENDING_BYTES`] lines are
//! dropped, and the next write says how many.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Most bytes of lines waiting to be written; a reader that falls this far behind loses lines.
pub const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;

/// How long the writer lets lines gather after the first one arrives: the longest a line
/// waits, and the shortest time between two writes.
const GATHER: Duration = Duration::from_millis(5);

/// The longest the guard waits for what is left to be written: a stderr nobody reads must
/// not keep the process from exiting.
const FINAL_WRITE_WAIT: Duration = Duration::from_secs(1);

/// The most a buffer keeps between writes: one grown by a burst is given back.
const KEPT_CAPACITY: usize = 1024 * 1024;

/// Where the service's log lines go (a [`MakeWriter`] for `tracing_subscriber`).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes what is left when dropped, and stops the writer's thread.
#[must_use = "dropping the guard stops the log writer"]
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    arrived: Condvar,
    finished: Condvar,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// Lines dropped since the last write.
    dropped: u64,
    /// The writer's thread waits for a first line (so the next one must wake it).
    idle: bool,
    closed: bool,
    /// The writer's thread wrote everything and returned.
    finished: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A writer of log lines to `out` on a thread of its own named `log-writer`; a notice of lines
/// dropped is written as `format` writes lines.
pub fn spawn<W: Write + Send + 'static>(
    out: W,
    format: LogFormat,
) -> std::io::Result<(LogWriter, FlushGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        arrived: Condvar::new(),
        finished: Condvar::new(),
    });
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = Arc::clone(&shared);
            move || {
                write_lines(&shared, out, format);
                shared.lock().finished = true;
                shared.finished.notify_all();
            }
        })?;
    Ok((
        LogWriter {
            shared: Arc::clone(&shared),
        },
        FlushGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// The writer's thread: takes what gathered, writes it, until closed and drained.
fn write_lines(shared: &Shared, mut out: impl Write, format: LogFormat) {
    let mut batch = Vec::new();
    loop {
        let (dropped, closed) = {
            let mut state = shared.lock();
            while state.pending.is_empty() && state.dropped == 0 && !state.closed {
                state.idle = true;
                state = shared
                    .arrived
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            state.idle = false;
            if !state.closed {
                drop(state);
                std::thread::sleep(GATHER);
                state = shared.lock();
            }
            // The emptied buffer of the last write takes the lines' place: no allocation
            // once both have grown to the usual batch.
            std::mem::swap(&mut state.pending, &mut batch);
            (std::mem::take(&mut state.dropped), state.closed)
        };
        // Errors writing to stderr have nowhere to be reported: the lines are lost.
        if dropped > 0 {
            let _ = out.write_all(dropped_notice(dropped, format).as_bytes());
        }
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        batch.shrink_to(KEPT_CAPACITY);
        if closed && shared.lock().pending.is_empty() {
            return;
        }
    }
}

/// The line saying that `dropped` lines were lost, in the log's format.
fn dropped_notice(dropped: u64, format: LogFormat) -> String {
    let message = format!(
        "log lines dropped: more than {} MiB of lines waited for stderr",
        MAX_PENDING_BYTES / (1024 * 1024)
    );
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    match format {
        LogFormat::Text => {
            format!("{at}  WARN syncasync::log_writer: {message} dropped={dropped}\n")
        }
        LogFormat::Json => format!(
            "{}\n",
            serde_json::json!({
                "timestamp": at,
                "level": "WARN",
                "message": message,
                "dropped": dropped,
                "target": "syncasync::log_writer",
            })
        ),
    }
}

impl Drop for FlushGuard {
    /// Writes what is left, waiting at most [`FINAL_WRITE_WAIT`] for it.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.arrived.notify_one();
        let deadline = Instant::now() + FINAL_WRITE_WAIT;
        while !state.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The thread is stuck writing; it is left behind, and ends with the process.
                return;
            }
            state = self
                .shared
                .finished
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(state);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Write for &LogWriter {
    /// Takes `buf` whole (one formatted event) or drops it whole.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        if state.pending.len() + buf.len() > MAX_PENDING_BYTES {
            state.dropped += 1;
        } else {
            state.pending.extend_from_slice(buf);
        }
        let wake = std::mem::take(&mut state.idle);
        drop(state);
        if wake {
            self.shared.arrived.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::{MAX_PENDING_BYTES, spawn};
    use crate::config::LogFormat;

    /// An output the test can read, and hold up.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn lines_are_written_in_order_and_all_are_written_when_the_guard_drops() {
        let out = Captured::default();
        let (writer, guard) = spawn(out.clone(), LogFormat::Text).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1_000 {
                        (&writer)
                            .write_all(format!("{t} {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = out.text();
        for t in 0..4 {
            let own: Vec<usize> = text
                .lines()
                .filter_map(|line| line.strip_prefix(&format!("{t} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(own, (0..1_000).collect::<Vec<_>>(), "thread {t}'s lines");
        }
    }

    #[test]
    fn a_line_is_written_without_waiting_for_more() {
        let out = Captured::default();
        let (writer, _guard) = spawn(out.clone(), LogFormat::Text).unwrap();
        (&writer).write_all(b"alone\n").unwrap();
        let started = Instant::now();
        while out.text().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the line never came"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out.text(), "alone\n");
    }

    /// An output that blocks until the test lets it go, as a pipe nobody reads does.
    struct Stuck(Arc<Mutex<()>>, Captured);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _held = self.0.lock().unwrap();
            self.1.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_falls_behind_loses_lines_past_the_bound_and_is_told_how_many() {
        let gate = Arc::new(Mutex::new(()));
        let out = Captured::default();
        let held = gate.lock().unwrap();
        let (writer, guard) =
            spawn(Stuck(Arc::clone(&gate), out.clone()), LogFormat::Text).unwrap();
        // The first line gets the writer stuck in its write; the rest wait in memory.
        (&writer).write_all(b"first\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        let fit = MAX_PENDING_BYTES / line.len();
        let started = Instant::now();
        for _ in 0..fit + 100 {
            (&writer).write_all(&line).unwrap();
        }
        // Nothing the writers did waited for the stuck output.
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(held);
        drop(guard);
        let text = out.text();
        assert!(text.starts_with("first\n"), "{}", &text[..20]);
        let written = text.lines().filter(|l| l.starts_with('x')).count();
        assert_eq!(written, fit, "lines kept");
        assert!(
            text.contains(
                "log lines dropped: more than 8 MiB of lines waited for stderr dropped=100\n"
            ),
            "the loss is reported"
        );
    }

    #[test]
    fn the_guard_gives_up_on_an_output_nobody_reads() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let (writer, guard) = spawn(
            Stuck(Arc::clone(&gate), Captured::default()),
            LogFormat::Text,
        )
        .unwrap();
        (&writer).write_all(b"never read\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        drop(guard);
        let waited = started.elapsed();
        assert!(
            (Duration::from_millis(900)..Duration::from_secs(5)).contains(&waited),
            "waited {waited:?}"
        );
        drop(held);
    }

    #[test]
    fn a_json_log_says_what_it_dropped_in_json() {
        let notice = super::dropped_notice(7, LogFormat::Json);
        assert!(notice.ends_with('\n') && notice.matches('\n').count() == 1);
        let value: serde_json::Value = serde_json::from_str(notice.trim_end()).unwrap();
        assert_eq!(value["dropped"], 7);
        assert_eq!(value["level"], "WARN");
    }
}
