//! The stdout writer: log lines wait in a bounded buffer and a thread of their own writes them, so that
//! a tokio worker never blocks on stdout.
//!
//! Why not write each line where it is made: stdout is a pipe to whatever collects the logs (a container
//! runtime, a terminal, a file). A write into a full pipe blocks until the reader catches up, and a
//! worker blocked in `write` stalls every task queued on it: calls miss their deadlines because of a slow
//! log reader. And one `write` per line (one per API call with the access log on) cost about a tenth of
//! fanout's CPU in the `cpu` benchmark, taken under stdout's lock by both workers.
//!
//! - A worker appends its line to the buffer under a std `Mutex` (held for a copy, never across an
//!   `.await`) and goes on. It wakes the writer only when the writer sleeps for lack of lines.
//! - The writer takes the whole buffer, writes it with one `write_all`, then pauses [`BATCH_PAUSE`] so
//!   that lines gather into batches: at most about a hundred writes a second, whatever the traffic. A line
//!   reaches stdout at most that pause plus one write after it was logged.
//! - The buffer is bounded ([`MAX_PENDING_BYTES`]). A line that does not fit is dropped and counted
//!   (`fanout_log_lines_dropped_total`), and the writer follows the lines it had with a
//!   `log_lines_dropped` line saying how many are missing: a gap in the log is never silent.
//! - The thread is started by the first line and lives as long as the process. `main` calls [`flush`]
//!   before it exits, which waits (bounded) until what was queued is written. A process killed with
//!   SIGKILL loses at most the last [`BATCH_PAUSE`] of lines.

use std::io::Write;
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

/// Lines waiting for the writer, at most. About 4,000 access lines: at 20,000 calls a second, a writer
/// stuck for a fifth of a second.
pub const MAX_PENDING_BYTES: usize = 1 << 20;

/// The writer's pause after each write, to gather the next batch.
pub const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// A bounded buffer of lines and the state the writer and the loggers share.
pub struct LineQueue {
    pending: Mutex<Pending>,
    capacity: usize,
    /// Wakes the writer when a line comes and it is waiting.
    lines_came: Condvar,
    /// Wakes [`LineQueue::flush`] callers when a batch has been written.
    batch_written: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Lines dropped since the writer last took the buffer, and since start.
    dropped: u64,
    dropped_total: u64,
    /// The writer waits on `lines_came`: the next line must wake it.
    writer_waiting: bool,
    /// Batches taken by the writer, and batches written: `flush` waits for the second to reach the first.
    taken: u64,
    written: u64,
}

impl LineQueue {
    pub fn new(capacity: usize) -> LineQueue {
        LineQueue {
            pending: Mutex::new(Pending::default()),
            capacity,
            lines_came: Condvar::new(),
            batch_written: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding it; if something did, the bytes are still fine to write.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one line (with its newline). Never blocks on the writer: a full buffer drops the line.
    pub fn push(&self, line: &[u8]) {
        let mut pending = self.lock();
        if pending.bytes.len() + line.len() > self.capacity {
            pending.dropped += 1;
            pending.dropped_total += 1;
            return;
        }
        pending.bytes.extend_from_slice(line);
        if std::mem::take(&mut pending.writer_waiting) {
            self.lines_came.notify_one();
        }
    }

    /// Lines dropped because the buffer was full, since start.
    pub fn dropped_total(&self) -> u64 {
        self.lock().dropped_total
    }

    /// Waits until every line queued before this call is written, or `limit` has passed. False if the
    /// limit came first (the writer is stuck on its output).
    pub fn flush(&self, limit: Duration) -> bool {
        let mut pending = self.lock();
        // Anything queued (a line, or a count of dropped ones) goes out with the next batch taken.
        let queued = !pending.bytes.is_empty() || pending.dropped > 0;
        let target = pending.taken + u64::from(queued);
        if std::mem::take(&mut pending.writer_waiting) {
            self.lines_came.notify_one();
        }
        let (_pending, waited) = self
            .batch_written
            .wait_timeout_while(pending, limit, |pending| pending.written < target)
            .unwrap_or_else(PoisonError::into_inner);
        !waited.timed_out()
    }

    /// The writer's loop: take everything queued, write it, pause, again. Runs for ever (the process's
    /// own thread); errors writing are ignored: a closed stdout loses lines, it never stops the service.
    pub fn run(&self, out: &mut impl Write) {
        loop {
            let (batch, dropped, taken) = {
                let mut pending = self.lock();
                while pending.bytes.is_empty() && pending.dropped == 0 {
                    pending.writer_waiting = true;
                    pending = self
                        .lines_came
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                pending.writer_waiting = false;
                pending.taken += 1;
                let taken = pending.taken;
                (
                    std::mem::take(&mut pending.bytes),
                    std::mem::take(&mut pending.dropped),
                    taken,
                )
            };
            let _ = out.write_all(&batch);
            if dropped > 0 {
                let mut line = super::line_start(super::Level::Warn, "log_lines_dropped");
                line.push_str(&format!(
                    "\"lines\":{dropped},\"max_pending_bytes\":{}}}\n",
                    self.capacity
                ));
                let _ = out.write_all(line.as_bytes());
            }
            let _ = out.flush();
            self.lock().written = taken;
            self.batch_written.notify_all();
            std::thread::sleep(BATCH_PAUSE);
        }
    }
}

/// The process's stdout queue; its writer thread starts with the first line.
static STDOUT: LazyLock<LineQueue> = LazyLock::new(|| LineQueue::new(MAX_PENDING_BYTES));
/// Whether the writer thread is running (false only if the system refused a thread).
static WRITER: OnceLock<bool> = OnceLock::new();

/// Writes one line (with its newline) to stdout through the writer thread.
pub fn to_stdout(line: &[u8]) {
    let started = *WRITER.get_or_init(|| {
        let queue: &'static LineQueue = &STDOUT;
        std::thread::Builder::new()
            .name("fanout-log".into())
            .spawn(move || queue.run(&mut std::io::stdout()))
            .is_ok()
    });
    if started {
        STDOUT.push(line);
    } else {
        // No thread to write for us: write here, as a last resort, rather than lose every line.
        let _ = std::io::stdout().lock().write_all(line);
    }
}

/// Stdout lines dropped because the writer could not keep up, since start.
pub fn stdout_dropped_total() -> u64 {
    STDOUT.dropped_total()
}

/// Waits (at most `limit`) until every line logged so far is on stdout. For `main`, before it exits.
pub fn flush(limit: Duration) -> bool {
    match WRITER.get() {
        Some(true) => STDOUT.flush(limit),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;

    /// An output that holds every write until the test lets it through, and keeps what was written.
    struct Gate {
        entered: mpsc::Sender<()>,
        open: mpsc::Receiver<()>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.open.recv();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_never_blocks_a_logger_and_the_lines_it_drops_are_counted_then_reported() {
        let queue: &'static LineQueue = Box::leak(Box::new(LineQueue::new(100)));
        let (open, gate) = mpsc::channel();
        let (entered, writing) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut out = Gate {
            entered,
            open: gate,
            written: written.clone(),
        };
        // Ends with the test process (it waits on the queue for ever); the queue is leaked for it.
        std::thread::spawn(move || queue.run(&mut out));

        // The first line is taken by the writer, which then blocks writing it.
        queue.push(b"first\n");
        writing.recv().unwrap();
        assert!(
            !queue.flush(Duration::from_millis(50)),
            "the output is stuck"
        );
        // Meanwhile every push returns at once: 10 lines of 20 bytes fit in 100 bytes 5 times.
        for i in 0..10 {
            queue.push(format!("line {i:02} ..........\n").as_bytes());
        }
        assert_eq!(queue.dropped_total(), 5);

        // Open the gate for good: one write per line is plenty.
        for _ in 0..100 {
            open.send(()).unwrap();
        }
        assert!(queue.flush(Duration::from_secs(10)));
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..6],
            [
                "first",
                "line 00 ..........",
                "line 01 ..........",
                "line 02 ..........",
                "line 03 ..........",
                "line 04 .........."
            ]
        );
        let report: serde_json::Value = serde_json::from_str(lines[6]).unwrap();
        assert_eq!(report["event"], "log_lines_dropped");
        assert_eq!(report["lines"], 5);
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn flush_returns_once_everything_queued_is_written() {
        let queue: &'static LineQueue = Box::leak(Box::new(LineQueue::new(1 << 16)));
        let written = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = mpsc::channel();
        let (entered, _writing) = mpsc::channel();
        let mut out = Gate {
            entered,
            open: gate,
            written: written.clone(),
        };
        std::thread::spawn(move || queue.run(&mut out));
        for _ in 0..1000 {
            open.send(()).unwrap();
        }
        for i in 0..300 {
            queue.push(format!("{i}\n").as_bytes());
        }
        assert!(queue.flush(Duration::from_secs(10)));
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let expected: String = (0..300).map(|i| format!("{i}\n")).collect();
        assert_eq!(text, expected, "every line, in order");
        assert!(
            queue.flush(Duration::from_millis(1)),
            "nothing left to wait for"
        );
    }
}
