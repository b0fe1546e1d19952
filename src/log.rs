//! Logs: one JSON object per line on stdout, for a log collector to parse, and readable enough by eye.
//!
//! Every line has `ts` (RFC 3339, UTC, milliseconds), `level` and `event`, then the event's own fields:
//!
//! ```text
//! {"ts":"2026-11-28T08:49:37.123Z","level":"info","event":"start","listen":"0.0.0.0:8080",...}
//! {"ts":"...","level":"info","event":"access","trace_id":"4bf9...","endpoint":"/api/all","status":200,...}
//! {"ts":"...","level":"warn","event":"upstream_unhealthy","success_ratio":0.31,...}
//! ```
//!
//! - **Level**: `--log` / `FANOUT_LOG`, one of `error`, `warn`, `info` (the default), `debug`: events below
//!   it are not written.
//! - **Access lines**: one per request whose head parsed, switched by `--access-log` / `FANOUT_ACCESS_LOG`,
//!   apart from the level (an operator may want the events without the traffic, or the reverse). They are
//!   written by hand rather than through `serde_json::Value`: every field is a number, a hex id or a fixed
//!   label, so nothing needs escaping, and building a `Value` map per call would cost more than the line.
//! - **No storms**: warnings and errors pass a token bucket, one per event name (a burst of [`WARN_BURST`],
//!   then one per [`WARN_REFILL`]), so a flood of one kind cannot hide another; what a bucket holds back is
//!   counted, and the next line of that event let through says how many (`"suppressed": N`). Upstream
//!   failures, which come in thousands when the upstream goes down, are never logged one by one outside
//!   the access line: they are counted in metrics, and the health watcher logs the change of state.
//!
//! Tests give the logger a memory sink ([`Logger::in_memory`]) instead of stdout and read its lines.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::time::{Duration, Instant};

use crate::date::write_rfc3339;

pub mod writer;

/// Warnings (and errors) let through at once before the limit applies.
pub const WARN_BURST: u32 = 20;
/// After the burst, one more warning is allowed per this much time.
pub const WARN_REFILL: Duration = Duration::from_secs(1);

/// How important an event is. Ordered: `Error < Warn < Info < Debug`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// Where lines go.
#[derive(Clone, Debug, Default)]
pub enum Sink {
    #[default]
    Stdout,
    /// Kept in memory, for tests.
    Memory(MemoryLog),
}

/// Lines kept in memory; clones share them.
#[derive(Clone, Debug, Default)]
pub struct MemoryLog(Arc<Mutex<Vec<String>>>);

impl MemoryLog {
    /// Every line so far, without its newline.
    pub fn lines(&self) -> Vec<String> {
        self.lock().clone()
    }

    /// The lines, even if a thread panicked while holding the lock: every critical section is one push
    /// or one clone.
    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The logging settings (from `--log`, `--access-log`), and the sink.
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub level: Level,
    pub access: bool,
    pub sink: Sink,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: Level::Info,
            access: true,
            sink: Sink::Stdout,
        }
    }
}

/// The token bucket of one warning event.
struct Bucket {
    event: String,
    tokens: f64,
    refilled: Instant,
    /// Held back since the last line of this event let through.
    suppressed: u64,
}

pub struct Logger {
    settings: LogSettings,
    /// A std Mutex: held only to do arithmetic, never across an `.await`; taken only by warnings. A Vec:
    /// there are a handful of warning events.
    buckets: Mutex<Vec<Bucket>>,
    /// Held back since start (a metric).
    suppressed_total: AtomicU64,
}

impl Logger {
    pub fn new(settings: LogSettings) -> Logger {
        Logger {
            settings,
            buckets: Mutex::new(Vec::new()),
            suppressed_total: AtomicU64::new(0),
        }
    }

    /// A logger writing into memory, and the handle to read it (tests).
    pub fn in_memory(settings: LogSettings) -> (Logger, MemoryLog) {
        let memory = MemoryLog::default();
        let logger = Logger::new(LogSettings {
            sink: Sink::Memory(memory.clone()),
            ..settings
        });
        (logger, memory)
    }

    /// Warnings and errors held back by the limit since start.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }

    pub fn info(&self, event: &str, fields: serde_json::Value) {
        self.event(Level::Info, event, fields);
    }

    /// A warning, subject to the limit (see the module doc).
    pub fn warn(&self, event: &str, fields: serde_json::Value) {
        self.event(Level::Warn, event, fields);
    }

    pub fn error(&self, event: &str, fields: serde_json::Value) {
        self.event(Level::Error, event, fields);
    }

    /// One event line: `ts`, `level`, `event`, then the members of `fields` (an object; anything else is
    /// put under `"detail"`).
    pub fn event(&self, level: Level, event: &str, fields: serde_json::Value) {
        if level > self.settings.level {
            return;
        }
        // The rate limit first: a warning held back (shedding comes in floods) costs no formatting.
        let held_back = if level <= Level::Warn {
            self.take_token(event)
        } else {
            Some(0)
        };
        let Some(held_back) = held_back else { return };
        let mut line = line_start(level, event);
        if held_back > 0 {
            line.push_str(&format!("\"suppressed\":{held_back},"));
        }
        match fields {
            serde_json::Value::Object(map) => {
                for (name, value) in map {
                    let _ = write!(line, "{}:{value},", serde_json::Value::String(name));
                }
            }
            other => line.push_str(&format!("\"detail\":{other},")),
        }
        self.write(line);
    }

    /// One access line: the fixed members, then `fill` appends the rest (each member followed by a comma).
    pub fn access(&self, fill: impl FnOnce(&mut String)) {
        if !self.settings.access {
            return;
        }
        let mut line = line_start(Level::Info, "access");
        fill(&mut line);
        self.write(line);
    }

    /// Takes a token for a warning: `Some(held back before it)` if it may be written, `None` if not.
    fn take_token(&self, event: &str) -> Option<u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let i = match buckets.iter().position(|b| b.event == event) {
            Some(i) => i,
            None => {
                buckets.push(Bucket {
                    event: event.to_string(),
                    tokens: f64::from(WARN_BURST),
                    refilled: now,
                    suppressed: 0,
                });
                buckets.len() - 1
            }
        };
        let bucket = &mut buckets[i];
        let earned = now.duration_since(bucket.refilled).as_secs_f64() / WARN_REFILL.as_secs_f64();
        bucket.tokens = (bucket.tokens + earned).min(f64::from(WARN_BURST));
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            bucket.suppressed += 1;
            self.suppressed_total.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        bucket.tokens -= 1.0;
        Some(std::mem::take(&mut bucket.suppressed))
    }

    /// Ends `line` (each member was followed by a comma) and writes it.
    fn write(&self, mut line: String) {
        line.pop(); // the last comma
        line.push('}');
        match &self.settings.sink {
            Sink::Stdout => {
                line.push('\n');
                // Whole lines into the writer thread's queue, so lines from many threads never interleave
                // and no worker waits on stdout (see `writer`).
                writer::to_stdout(line.as_bytes());
            }
            Sink::Memory(memory) => memory.lock().push(line),
        }
    }
}

/// `{"ts":"...","level":"...","event":"...",` with room for the rest.
fn line_start(level: Level, event: &str) -> String {
    let mut line = String::with_capacity(384);
    line.push_str("{\"ts\":\"");
    write_rfc3339(&mut line, SystemTime::now());
    // Event names are ours, but escape them anyway: a log line must always parse.
    let (level, event) = (level.name(), serde_json::Value::from(event));
    let _ = write!(line, "\",\"level\":\"{level}\",\"event\":{event},");
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parsed(memory: &MemoryLog) -> Vec<Value> {
        memory
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn lines_are_json_with_ts_level_event_and_fields() {
        let (log, memory) = Logger::in_memory(LogSettings::default());
        log.info(
            "start",
            json!({"listen": "0.0.0.0:8080", "odd": "a \"quoted\"\nline"}),
        );
        log.access(|l| l.push_str("\"status\":200,"));
        let lines = parsed(&memory);
        assert_eq!(lines[0]["event"], "start");
        assert_eq!(lines[0]["level"], "info");
        assert_eq!(lines[0]["odd"], "a \"quoted\"\nline");
        assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["status"], 200);
    }

    #[test]
    fn the_level_filters_events_but_not_access_lines() {
        let settings = LogSettings {
            level: Level::Warn,
            ..LogSettings::default()
        };
        let (log, memory) = Logger::in_memory(settings);
        log.info("quiet", json!({}));
        log.event(Level::Debug, "quieter", json!({}));
        log.warn("loud", json!({}));
        log.access(|l| l.push_str("\"status\":200,"));
        let events: Vec<Value> = parsed(&memory).iter().map(|v| v["event"].clone()).collect();
        assert_eq!(events, [json!("loud"), json!("access")]);
    }

    #[tokio::test(start_paused = true)]
    async fn warnings_en_masse_are_held_back_and_counted() {
        let (log, memory) = Logger::in_memory(LogSettings::default());
        for _ in 0..1000 {
            log.warn("shed", json!({}));
        }
        assert_eq!(memory.lines().len(), WARN_BURST as usize);
        assert_eq!(log.suppressed_total(), 1000 - u64::from(WARN_BURST));
        log.warn("other", json!({}));
        assert_eq!(
            memory.lines().len(),
            WARN_BURST as usize + 1,
            "each event has its own limit"
        );
        tokio::time::advance(WARN_REFILL).await;
        log.warn("shed", json!({}));
        let last = parsed(&memory).pop().unwrap();
        assert_eq!(last["suppressed"], 1000 - WARN_BURST);
    }
}
