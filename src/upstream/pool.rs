//! The keep-alive pool: idle connections waiting to be reused, and the cap on open connections.
//!
//! It follows hyper-util's pool rules (`hyper-util/src/client/legacy/pool.rs`), minus its generality: one
//! upstream, HTTP/1.1 only, so one plain `Mutex` over the idle list and the waiters does.
//!
//! # The pool's rules
//!
//! The one numbered list: DESIGN.md ("The connection pool", with the figures) and the code cite these
//! numbers. This file keeps 1 to 5; `mod.rs` keeps 6 and 9, `resolve.rs` 7, `tls.rs` 8.
//!
//! 1. **Only connections at rest come back.** A connection is offered back ([`Pool::put`]) only with no
//!    request outstanding: after its response was read to the end and allowed persistence (HTTP/1.1, no
//!    `Connection: close`, framed by `Content-Length` or chunked, nothing after the body), or before it
//!    carried any (a replacement just opened, a handover a checkout no longer needs). Any other may have
//!    bytes of an old response in flight, which the next request would read as its own: it is dropped,
//!    which closes it.
//! 2. **Last in, first out.** Checkout takes the most recently returned connection: it is the least likely to
//!    have been closed by the server, and the oldest ones are left to expire.
//! 3. **Check before use.** Checkout skips (and closes) an idle connection past its expiry, or one the
//!    server closed meanwhile: EOF, a TLS close_notify, an error or stray bytes when one read is polled with a
//!    no-op waker (`Connection::is_open`). This sees only what the I/O driver already noticed, hence rule 6.
//!    A connection handed over at the cap (rule 5) comes straight from a completed exchange, and is not
//!    probed again (`put` refuses one already expired).
//! 4. **Expire before the server does.** Idle connections close after the idle timeout (4 s, below the
//!    shortest common server keep-alive, Apache's 5 s) or one second before the server's
//!    `Keep-Alive: timeout=N`. A background reaper closes them, so sockets are really released.
//! 5. **Bounded, and handed over at the cap.** Each connection, active or idle, holds a permit of one
//!    semaphore, and at most `max_idle` wait idle. A caller that finds no idle connection and no free permit
//!    waits, no longer than its deadline, for whichever comes first: a connection handed over by an exchange
//!    that just completed (the longest waiter gets it), or a permit freed by a connection that closed
//!    (tokio's `Semaphore` is fair). At the cap, connections pass from one request to the next without a new
//!    handshake.
//! 6. **Retry only what never started** (`Upstream::exchange_with_retry`). A GET that fails on a *reused*
//!    connection before any byte of response (the server closed it while our request was on the wire) is
//!    retried once on a fresh connection if its caller still waits and the deadline allows (hyper-util's
//!    rule; RFC 9112 §9.3.1 allows it for idempotent requests). A fresh connection that fails, or a response
//!    that broke off, is not.
//! 7. **Resolve rarely, and off the workers** (`resolve.rs`). The lookup runs on the blocking pool, in a task
//!    that fills a 30 s cache even if its caller's deadline passed; a burst of new connections waits for one.
//! 8. **Keep enough TLS tickets for a burst, and hash with SHA-256** (`tls.rs`). A resumed TLS 1.3 handshake
//!    skips the certificate chain and two ECDSA verifications; rustls keeps 8 tickets per server, which a
//!    burst empties, so our store keeps 256, each used once (RFC 8446 §C.4). The SHA-256 suites come first:
//!    ring computes SHA-384 in software, SHA-256 with the CPU's SHA extensions.
//! 9. **Replace what a hang took, at a spread-out time** (`Upstream::replace_abandoned`). A request
//!    unfinished when its linger bound runs out has cost its connection. The task that gave up opens a new
//!    one in the background, if a slot is free and nobody waits, after a pause drawn up to half the linger
//!    time, so connections abandoned together are not replaced in one burst of handshakes. At most one wasted
//!    handshake per hang.
//!
//! The lock is a `std::sync::Mutex`, not tokio's: it is never held across an `.await`, only for a push or a
//! pop, and a std mutex is cheaper and cannot be held by a task that went to sleep.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::connection::Connection;
use super::{PoolStats, UpstreamError};
use crate::held::Held;
use crate::task::AbortOnDrop;

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

/// What the pool's lock guards.
#[derive(Default)]
struct Shelf {
    /// Idle connections, the most recently returned last.
    idle: Vec<Idle>,
    /// Callers waiting at the cap, the longest waiting first. A caller that gave up leaves its sender
    /// behind, closed; `put` skips it.
    waiters: VecDeque<oneshot::Sender<Idle>>,
}

/// A caller waiting at the cap in [`Pool::checkout`]: the receiving end of its handover channel (the
/// sending end is its entry in `Shelf::waiters`), counted in `Pool::waiting`. However the wait ends (a
/// handover, a slot, the deadline, or the checkout's future dropped), a connection handed over but not taken
/// goes back to the pool instead of closing with the channel: a caller leaving as `put` hands it a
/// connection costs no handshake.
struct Waiter<'a> {
    pool: &'a Pool,
    handover: oneshot::Receiver<Idle>,
    _counted: Held<&'a AtomicUsize>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        // Closed first, so `put` cannot hand this waiter another one.
        self.handover.close();
        if let Ok(idle) = self.handover.try_recv() {
            self.pool.put(idle.conn, idle.expires);
        }
    }
}

pub(crate) struct Pool {
    shelf: Mutex<Shelf>,
    /// One permit per open (or opening) connection, idle or active.
    slots: Arc<Semaphore>,
    max_connections: usize,
    max_idle: usize,
    /// Callers queued for a slot right now: [`Pool::try_slot`] leaves slots to them.
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
    /// A gauge, not a counter: exchanges lingering now (each [`Held`] up while it lingers).
    pub lingering: AtomicUsize,
}

impl Counters {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub(crate) fn new(max_connections: usize, max_idle: usize) -> Pool {
        Pool {
            shelf: Mutex::new(Shelf::default()),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            max_idle,
            waiting: AtomicUsize::new(0),
            counters: Counters::default(),
        }
    }

    /// An idle connection to reuse, or a slot to open a new one, waiting for either if all slots are taken.
    ///
    /// Cancel safety: while waiting it owns its place in the semaphore's queue and in the pool's, which
    /// dropping gives up. A connection handed over in the instant the caller left goes back to the pool (to
    /// the next waiter, or idle), not closed ([`Waiter`]). Once it returns, the caller owns the connection or
    /// slot.
    pub(crate) async fn checkout(&self, deadline: Instant) -> Result<Checkout, UpstreamError> {
        // Under the lock only to take a connection or a slot, or to queue: a connection is checked, and
        // closed if dead, outside it.
        let mut waiter = loop {
            let mut shelf = self.lock_shelf();
            if let Some(mut candidate) = shelf.idle.pop() {
                drop(shelf);
                if candidate.expires > Instant::now() && candidate.conn.is_open() {
                    Counters::count(&self.counters.reuses);
                    return Ok(Checkout::Reused(candidate.conn));
                }
                continue; // expired, or closed by the server: dropping it closes the socket and frees its slot
            }
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                return Ok(Checkout::Fresh(slot));
            }
            // Queued under the same lock that `put` looks at the queue under, so a connection returned right
            // after we found the list empty comes to us, not to the list. Counted in `waiting` until the wait
            // ends, however it ends: slot, connection, deadline, or future dropped.
            let (sender, handover) = oneshot::channel();
            shelf.waiters.push_back(sender);
            break Waiter {
                pool: self,
                handover,
                _counted: Held::up(&self.waiting),
            };
        };
        Counters::count(&self.counters.slot_waits);
        let wait = async {
            tokio::select! {
                // `put` never drops a sender it took from the queue without sending.
                Ok(idle) = &mut waiter.handover => {
                    Counters::count(&self.counters.reuses);
                    Ok(Checkout::Reused(idle.conn))
                }
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => Ok(Checkout::Fresh(slot)),
                    // We never close the semaphore; a closed one would mean the pool is gone.
                    Err(_closed) => Err(UpstreamError::Io(std::io::Error::other(
                        "connection pool closed",
                    ))),
                },
            }
        };
        // Dropped here, the checkout drops `waiter` too: see its `Drop`.
        let result = timeout_at(deadline, wait)
            .await
            .unwrap_or(Err(UpstreamError::Timeout));
        // A slot (or the deadline) won, but a connection may have been handed over in the meantime.
        drop(waiter);
        result
    }

    /// A slot for a new connection, if one is free at once and no caller is queued for one.
    pub(crate) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Offers back a connection at rest (rule 1): its response read to the end and allowing reuse, or no
    /// request carried yet.
    ///
    /// If callers are queued at the cap, it goes to the one waiting longest, as it is: no close, no new
    /// handshake. (Closing it to free its slot for the waiter, who then opened a new connection, meant one
    /// handshake per request at the cap under overload, whose CPU kept the pool at the cap: rule 5, and its
    /// figure in DESIGN.md, "The connection pool".) Otherwise it is parked, or closed if already expired or
    /// if the pool holds `max_idle` connections (hyper-util's rule too: the idle list stays bounded, the
    /// newcomer goes). Says whether it was kept: handed over or parked.
    pub(crate) fn put(&self, conn: Connection, expires: Instant) -> bool {
        let mut idle = Idle { conn, expires };
        let refused = if expires <= Instant::now() {
            Some(idle)
        } else {
            let mut shelf = self.lock_shelf();
            loop {
                match shelf.waiters.pop_front() {
                    Some(waiter) => match waiter.send(idle) {
                        Ok(()) => break None,
                        // That caller gave up: try the next one.
                        Err(back) => idle = back,
                    },
                    None if shelf.idle.len() >= self.max_idle => break Some(idle),
                    None => {
                        shelf.idle.push(idle);
                        break None;
                    }
                }
            }
        };
        let kept = refused.is_none();
        drop(refused); // outside the lock: closing a socket is a system call
        kept
    }

    /// Closes every idle connection past its expiry.
    pub(crate) fn reap(&self) {
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut shelf = self.lock_shelf();
            // partition keeps the order, so the list stays most-recent-last.
            let (keep, expired) = std::mem::take(&mut shelf.idle)
                .into_iter()
                .partition(|i| i.expires > now);
            shelf.idle = keep;
            // Senders of callers that gave up, so the queue does not grow while nobody calls `put`.
            shelf.waiters.retain(|w| !w.is_closed());
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
            idle: self.lock_shelf().idle.len(),
            lingering: c.lingering.load(Ordering::Relaxed),
            finished_in_background: c.finished_in_background.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
        }
    }

    /// The idle list and the queue, even if a thread panicked while holding the lock: every critical section
    /// is a single push, pop or swap, so a poisoned lock still guards a consistent shelf.
    fn lock_shelf(&self) -> MutexGuard<'_, Shelf> {
        self.shelf.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Spawns the reaper, the background task closing expired idle connections, on the current tokio runtime
/// (call only from inside one). Dropping the handle stops the task.
///
/// The task holds only a `Weak` to the pool, so it never keeps the pool alive; the owner (the `Upstream`)
/// holds the handle, so the task ends when the `Upstream` is dropped, right away rather than at its next tick.
pub(crate) fn spawn_reaper(pool: &Arc<Pool>, idle_timeout: Duration) -> AbortOnDrop<()> {
    let every = (idle_timeout / 2).clamp(MIN_REAP_INTERVAL, MAX_REAP_INTERVAL);
    let pool: Weak<Pool> = Arc::downgrade(pool);
    AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match pool.upgrade() {
                Some(pool) => pool.reap(),
                None => return,
            }
        }
    }))
}
