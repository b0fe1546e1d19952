//! Turning the upstream's host into socket addresses, with a small cache.
//!
//! `tokio::net::lookup_host` runs the system resolver (`getaddrinfo`, which blocks) on tokio's blocking
//! thread pool, so the worker threads that run our tasks never stall on DNS. Each lookup still costs a thread
//! hand-off and often a network round trip, so the answer is kept for [`DNS_CACHE_TTL`] instead of being
//! fetched again for every new connection (the pool's rule 7, numbered in `pool.rs`).
//!
//! One lookup at a time: the cache sits behind a `tokio::sync::Mutex` that is held *across* the lookup, so a
//! burst of new connections at start-up waits for one answer instead of sending hundreds of identical
//! queries. (An async mutex, not std's: it is held across an `.await`.) The lookup runs in a task of its own
//! that holds the lock and fills the cache when the answer comes, so a caller whose deadline is shorter than
//! the resolver's answer time does not throw the answer away: the next caller finds it cached. Its end is the
//! system resolver's own timeout (`resolv.conf`: 5 s per try by default).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::{timeout_at, Instant};

use super::target::Host;
use super::UpstreamError;

/// How long a DNS answer is reused. We cannot see the record's real TTL through `getaddrinfo`; 30 s is short
/// enough to follow a failover or a load balancer's rotation within a minute, and long enough that lookups
/// are rare compared with requests.
const DNS_CACHE_TTL: Duration = Duration::from_secs(30);

type Cached = (Arc<[SocketAddr]>, Instant);

pub(crate) struct Resolver {
    host: Host,
    port: u16,
    /// The last answer and when it was fetched.
    cache: Arc<Mutex<Option<Cached>>>,
}

impl Resolver {
    pub(crate) fn new(host: Host, port: u16) -> Self {
        Resolver {
            host,
            port,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// The addresses to try, in the resolver's order of preference (RFC 6724, as `getaddrinfo` sorts them).
    ///
    /// Cancel safety: owns no socket. Dropped while waiting for the lock, nothing is lost; dropped while the
    /// lookup runs, the lookup goes on in its task and still fills the cache.
    pub(crate) async fn resolve(
        &self,
        deadline: Instant,
    ) -> Result<Arc<[SocketAddr]>, UpstreamError> {
        let name = match &self.host {
            // An IP literal needs no lookup.
            Host::Ip(ip) => return Ok(Arc::from([SocketAddr::new(*ip, self.port)])),
            Host::Name(name) => name.clone(),
        };

        let mut cache = timeout_at(deadline, self.cache.clone().lock_owned())
            .await
            .map_err(|_| UpstreamError::Timeout)?;
        if let Some((addrs, fetched)) = &*cache {
            if fetched.elapsed() < DNS_CACHE_TTL {
                return Ok(addrs.clone());
            }
        }

        let port = self.port;
        let task = tokio::spawn(async move {
            let addrs = lookup(&name, port).await;
            // Failures are not cached: the next connection attempt asks again.
            if let Ok(addrs) = &addrs {
                *cache = Some((addrs.clone(), Instant::now()));
            }
            addrs
        });
        // Cancel: the lookup's task is detached here, not dropped: it ends with the resolver's answer.
        match timeout_at(deadline, task).await {
            Err(_elapsed) => Err(UpstreamError::Timeout),
            Ok(Ok(addrs)) => addrs,
            Ok(Err(e)) => Err(UpstreamError::Connect(io::Error::other(format!(
                "resolving the upstream's host: {e}"
            )))),
        }
    }
}

/// The system resolver's answer for `name`, or why there is none.
async fn lookup(name: &str, port: u16) -> Result<Arc<[SocketAddr]>, UpstreamError> {
    let failed = |kind, e: &dyn std::fmt::Display| {
        UpstreamError::Connect(io::Error::new(kind, format!("resolving {name}: {e}")))
    };
    let addrs: Arc<[SocketAddr]> = tokio::net::lookup_host((name, port))
        .await
        .map_err(|e| failed(e.kind(), &e))?
        .collect();
    if addrs.is_empty() {
        return Err(failed(io::ErrorKind::NotFound, &"no addresses"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller whose deadline passes while the lookup runs leaves it running: its answer fills the cache
    /// for the next caller, who gets it even with no time left at all.
    #[tokio::test]
    async fn a_lookup_abandoned_by_its_caller_still_fills_the_cache() {
        let resolver = Resolver::new(Host::Name("localhost".into()), 8080);
        // Before the runtime started, so the timer fires on its first poll, whatever the lookup's speed.
        let no_time = Instant::now() - Duration::from_secs(1);
        assert!(matches!(
            resolver.resolve(no_time).await,
            Err(UpstreamError::Timeout)
        ));
        // The lookup's task holds the cache until its answer is in.
        drop(resolver.cache.lock().await);
        let addrs = resolver.resolve(no_time).await.expect("the answer, cached");
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.port() == 8080));
    }
}
