//! Turning the upstream's host into socket addresses, with a small cache.
//!
//! `tokio::net::lookup_host` runs the system resolver (`getaddrinfo`, which blocks) on tokio's blocking
//! thread pool, so the worker threads that run our tasks never stall on DNS. Each lookup still costs a thread
//! hand-off and often a network round trip, so the answer is kept for [`DNS_CACHE_TTL`] instead of being
//! fetched again for every new connection.
//!
//! One lookup at a time: the cache sits behind a `tokio::sync::Mutex` that is held *across* the lookup, so a
//! burst of new connections at start-up waits for one answer instead of sending hundreds of identical
//! queries. (An async mutex, not std's: it is held across an `.await`.)

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
pub const DNS_CACHE_TTL: Duration = Duration::from_secs(30);

pub(crate) struct Resolver {
    host: Host,
    port: u16,
    /// The last answer and when it was fetched.
    cache: Mutex<Option<(Arc<[SocketAddr]>, Instant)>>,
}

impl Resolver {
    pub(crate) fn new(host: Host, port: u16) -> Self {
        Resolver {
            host,
            port,
            cache: Mutex::new(None),
        }
    }

    /// The addresses to try, in the resolver's order of preference (RFC 6724, as `getaddrinfo` sorts them).
    ///
    /// Cancel safety: owns no socket. If dropped while waiting or looking up, the cache lock is released and
    /// the next caller looks up afresh; the abandoned `getaddrinfo` call finishes on the blocking pool and its
    /// answer is discarded.
    pub(crate) async fn resolve(
        &self,
        deadline: Instant,
    ) -> Result<Arc<[SocketAddr]>, UpstreamError> {
        let name = match &self.host {
            // An IP literal needs no lookup.
            Host::Ip(ip) => return Ok(Arc::from([SocketAddr::new(*ip, self.port)])),
            Host::Name(name) => name.as_str(),
        };

        let mut cache = timeout_at(deadline, self.cache.lock())
            .await
            .map_err(|_| UpstreamError::Timeout)?;
        if let Some((addrs, fetched)) = &*cache {
            if fetched.elapsed() < DNS_CACHE_TTL {
                return Ok(addrs.clone());
            }
        }

        let lookup = timeout_at(deadline, tokio::net::lookup_host((name, self.port)))
            .await
            .map_err(|_| UpstreamError::Timeout)?;
        let addrs: Arc<[SocketAddr]> = lookup
            .map_err(|e| {
                UpstreamError::Connect(io::Error::new(e.kind(), format!("resolving {name}: {e}")))
            })?
            .collect();
        if addrs.is_empty() {
            let e = io::Error::new(
                io::ErrorKind::NotFound,
                format!("resolving {name}: no addresses"),
            );
            return Err(UpstreamError::Connect(e));
        }
        // Failures are not cached: the next connection attempt asks again.
        *cache = Some((addrs.clone(), Instant::now()));
        Ok(addrs)
    }
}
