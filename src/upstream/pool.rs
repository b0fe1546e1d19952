//! The keep-alive pool: idle connections waiting to be reused, and the cap on open connections.
//!
//! It follows hyper-util's pool rules (`hyper-util/src/client/legacy/pool.rs`), minus its generality: one
//! upstream, HTTP/1.1 only, so a plain `Mutex<Vec<Idle>>` does.
//!
//! 1. **Only complete exchanges come back.** A connection is offered back ([`Pool::put`]) only after its
//!    response was read to the end and said the connection may persist. A connection whose exchange was
//!    cut short, by an error or by running out of time (the caller's deadline, or the linger time after the
//!    caller left, see `Upstream::fetch`), is dropped, which closes it.
//! 2. **Last in, first out.** Checkout takes the most recently returned connection: it is the least likely to
//!    have been closed by the server, and the oldest ones are left to expire.
//! 3. **Check before use.** Checkout skips (and closes) a connection that is past its expiry or that the
//!    server has closed meanwhile (`Connection::is_open`).
//! 4. **Expire idle ones.** A connection idle for longer than the idle timeout (or the server's `Keep-Alive`
//!    hint) is closed by a background reaper, so we never keep sockets the server has given up on.
//! 5. **A cap on open connections.** Each connection, active or idle, holds a permit of one semaphore; a
//!    caller that finds no idle connection and no free permit waits for one, in arrival order (tokio's
//!    `Semaphore` is fair), for no longer than its deadline.
//!
//! The lock is a `std::sync::Mutex`, not tokio's: it is never held across an `.await`, only for a push or a
//! pop, and a std mutex is cheaper and cannot be held by a task that went to sleep.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::{timeout_at, Instant};

use super::connection::Connection;
use super::{PoolStats, UpstreamError};

/// The reaper wakes at half the idle timeout, so an expired connection lives at most half a timeout longer,
/// but not more often than this (a tiny timeout in a test should not make it spin) ...
pub(crate) const MIN_REAP_INTERVAL: Duration = Duration::from_millis(10);
/// ... and not less often than this (expired connections are skipped at checkout anyway; the reaper only
/// frees their sockets sooner).
pub(crate) const MAX_REAP_INTERVAL: Duration = Duration::from_secs(1);

/// A connection waiting to be reused.
struct Idle {
    conn: Connection,
    /// After this instant the connection is closed, not reused.
    expires: Instant,
}

/// What checkout found.
pub(crate) enum Checkout {
    /// An idle connection, checked and ready for a request.
    Reused(Connection),
    /// No idle connection, but room for a new one: the caller connects with this slot.
    Fresh(OwnedSemaphorePermit),
}

/// Checkout's decision, taken under the lock and carried out after it.
enum Next<'a> {
    /// Look at this idle connection.
    Check(Idle),
    /// Queue for a slot.
    /// (Counted in `waiting` until the wait ends, however it ends: slot, deadline, or future dropped.)
    Wait(Gauge<'a>),
}

pub(crate) struct Pool {
    /// Idle connections, the most recently returned last.
    idle: Mutex<Vec<Idle>>,
    /// One permit per open (or opening) connection, idle or active.
    slots: Arc<Semaphore>,
    max_connections: usize,
    max_idle: usize,
    /// Callers queued for a slot right now. See [`Pool::put`] for why the pool needs to know.
    waiting: AtomicUsize,
    pub(crate) counters: Counters,
}

/// Monotonic event counts; `Relaxed` because each is only ever read as a statistic.
#[derive(Default)]
pub(crate) struct Counters {
    pub connects: AtomicU64,
    pub reuses: AtomicU64,
    pub stale_retries: AtomicU64,
    pub slot_waits: AtomicU64,
    pub finished_in_background: AtomicU64,
    pub abandoned: AtomicU64,
    /// A gauge, not a counter: exchanges lingering now (see [`Gauge`]).
    pub lingering: AtomicUsize,
}

impl Counters {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Holds a gauge one higher for as long as it lives, however its scope ends (drop guard).
pub(crate) struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    pub(crate) fn up(gauge: &'a AtomicUsize) -> Gauge<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub(crate) fn new(max_connections: usize, max_idle: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            max_idle,
            waiting: AtomicUsize::new(0),
            counters: Counters::default(),
        }
    }

    /// An idle connection to reuse, or a slot to open a new one, waiting for a slot if all are taken.
    ///
    /// Cancel safety: while waiting it owns nothing but its place in the semaphore's queue, which dropping
    /// gives up. Once it returns, the caller owns the connection or slot.
    pub(crate) async fn checkout(&self, deadline: Instant) -> Result<Checkout, UpstreamError> {
        loop {
            // Decide under the lock, act outside it.
            let next = {
                let mut idle = self.lock_idle();
                match idle.pop() {
                    Some(candidate) => Next::Check(candidate),
                    None => match self.slots.clone().try_acquire_owned() {
                        Ok(slot) => return Ok(Checkout::Fresh(slot)),
                        // Registered under the same lock that `put` checks it under, so a connection returned
                        // right after we found the list empty is not parked in it while we wait.
                        Err(_no_permit) => Next::Wait(Gauge::up(&self.waiting)),
                    },
                }
            };
            match next {
                Next::Check(mut candidate) => {
                    if candidate.expires > Instant::now() && candidate.conn.is_open() {
                        Counters::count(&self.counters.reuses);
                        return Ok(Checkout::Reused(candidate.conn));
                    }
                    // Expired, or closed by the server: dropping it closes the socket and frees its slot.
                    drop(candidate);
                }
                Next::Wait(_waiting) => {
                    Counters::count(&self.counters.slot_waits);
                    return match timeout_at(deadline, self.slots.clone().acquire_owned()).await {
                        Err(_elapsed) => Err(UpstreamError::Timeout),
                        Ok(Ok(slot)) => Ok(Checkout::Fresh(slot)),
                        // We never close the semaphore; a closed one would mean the pool is gone.
                        Ok(Err(_closed)) => Err(UpstreamError::Io(std::io::Error::other(
                            "connection pool closed",
                        ))),
                    };
                }
            }
        }
    }

    /// A slot for a new connection, if one is free at once and no caller is queued for one.
    pub(crate) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Offers back a connection whose exchange completed and whose response allowed reuse.
    ///
    /// It is closed instead if it is already expired, if the pool holds `max_idle` connections (hyper-util's
    /// rule too: the idle list stays bounded, the newcomer goes), or if callers are queued for a slot. In that
    /// last case the cap is reached and closing this connection hands its slot to the longest waiter, in
    /// arrival order; that caller then opens a new connection. Handing the socket itself to the waiter would
    /// save a handshake but needs a second queue, and the cap is a safety limit, not an operating point.
    pub(crate) fn put(&self, conn: Connection, expires: Instant) {
        let refused = {
            let mut idle = self.lock_idle();
            if expires <= Instant::now()
                || idle.len() >= self.max_idle
                || self.waiting.load(Ordering::Relaxed) > 0
            {
                Some(conn)
            } else {
                idle.push(Idle { conn, expires });
                None
            }
        };
        drop(refused); // outside the lock: closing a socket is a system call
    }

    /// Closes every idle connection past its expiry.
    pub(crate) fn reap(&self) {
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut idle = self.lock_idle();
            // partition keeps the order, so the list stays most-recent-last.
            let (keep, expired) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| i.expires > now);
            *idle = keep;
            expired
        };
        drop(expired); // outside the lock
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let c = &self.counters;
        PoolStats {
            connects: c.connects.load(Ordering::Relaxed),
            reuses: c.reuses.load(Ordering::Relaxed),
            stale_retries: c.stale_retries.load(Ordering::Relaxed),
            slot_waits: c.slot_waits.load(Ordering::Relaxed),
            open: self.max_connections - self.slots.available_permits(),
            idle: self.lock_idle().len(),
            lingering: c.lingering.load(Ordering::Relaxed),
            finished_in_background: c.finished_in_background.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
        }
    }

    /// The idle list, even if a thread panicked while holding the lock: every critical section is a single
    /// push, pop or swap of the whole Vec, so a poisoned lock still guards a consistent list.
    fn lock_idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The background task closing expired idle connections. Dropping this handle stops the task.
///
/// The task holds only a `Weak` to the pool, so it never keeps the pool alive; the owner (the `Upstream`)
/// holds this handle, so the task ends when the `Upstream` is dropped, right away rather than at its next tick.
pub(crate) struct Reaper(AbortHandle);

impl Reaper {
    /// Spawns the reaper on the current tokio runtime. Call only from inside one.
    pub(crate) fn spawn(pool: &Arc<Pool>, idle_timeout: Duration) -> Reaper {
        let every = (idle_timeout / 2).clamp(MIN_REAP_INTERVAL, MAX_REAP_INTERVAL);
        let pool: Weak<Pool> = Arc::downgrade(pool);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match pool.upgrade() {
                    Some(pool) => pool.reap(),
                    None => return,
                }
            }
        });
        Reaper(task.abort_handle())
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.0.abort();
    }
}
