//! The TLS client configuration, built once and shared by every connection.
//!
//! - Crypto: rustls with the *ring* provider, chosen explicitly (`builder_with_provider`) so nothing depends on
//!   a process-wide default provider being installed.
//! - Versions: rustls's safe defaults (TLS 1.3 and 1.2).
//! - Trust: the Mozilla root programme as shipped by `webpki-roots` (no dependency on the host's certificate
//!   store), plus `extra_roots` from the configuration, for the simulator's or a test's own CA.
//! - ALPN (RFC 7301): we offer only `http/1.1`, so a server that also speaks HTTP/2 knows not to switch.
//! - Resumption: rustls's defaults (TLS 1.3 tickets, TLS 1.2 session ids and tickets), with room for more
//!   TLS 1.3 tickets than rustls keeps ([`TLS13_TICKETS_KEPT`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::{ClientConfig, NamedGroup, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

pub(crate) fn connector(extra_roots: &[CertificateDer<'static>]) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (i, cert) in extra_roots.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| format!("extra TLS root #{i} is not a usable CA certificate: {e}"))?;
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::store(Arc::new(SessionStore::new()));

    Ok(TlsConnector::from(Arc::new(config)))
}

/// TLS 1.3 session tickets kept for resumption. rustls's own store keeps 8 per server: plenty for a browser,
/// too few for a client that opens connections to one host in bursts. An upstream that hangs makes fanout
/// replace connections by the thousand (each hung request holds its connection until it is closed), and with
/// 8 tickets 60% of those handshakes found none left and were full handshakes: the certificate chain built
/// and checked, two ECDSA signatures verified, about three times the CPU of a resumed one. A server sends
/// each new connection tickets of its own (rustls servers send 2), so the supply keeps up once it may be kept.
pub(crate) const TLS13_TICKETS_KEPT: usize = 256;

/// The session store behind `connector`: [`TLS13_TICKETS_KEPT`] TLS 1.3 tickets for the one server this
/// client talks to, newest first; everything else (key-exchange hints, TLS 1.2 sessions) in rustls's store.
#[derive(Debug)]
struct SessionStore {
    other: ClientSessionMemoryCache,
    /// The server's name and its tickets, oldest at the front. One server: a client is built per upstream,
    /// and a ticket for another name (never asked for here) would replace them rather than grow the store.
    tls13: Mutex<Option<(ServerName<'static>, VecDeque<Tls13ClientSessionValue>)>>,
}

impl SessionStore {
    fn new() -> SessionStore {
        SessionStore {
            other: ClientSessionMemoryCache::new(8),
            tls13: Mutex::new(None),
        }
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.other.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.other.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.other.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.other.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.other.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut tls13 = self.tls13.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *tls13 {
            Some((name, tickets)) if *name == server_name => {
                if tickets.len() == TLS13_TICKETS_KEPT {
                    tickets.pop_front();
                }
                tickets.push_back(value);
            }
            other => *other = Some((server_name, VecDeque::from([value]))),
        }
    }

    /// The newest ticket, which is the least likely to have expired. rustls uses each ticket once, as
    /// RFC 8446 §C.4 asks, and this hands each out once.
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut tls13 = self.tls13.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *tls13 {
            Some((name, tickets)) if name == server_name => tickets.pop_back(),
            _ => None,
        }
    }
}
