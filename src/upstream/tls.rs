//! The TLS client configuration, built once and shared by every connection.
//!
//! - Crypto: rustls with the *ring* provider, chosen explicitly (`builder_with_provider`) so nothing depends on
//!   a process-wide default provider being installed.
//! - Versions: rustls's safe defaults (TLS 1.3 and 1.2).
//! - Cipher suites: rustls's, with those hashing with SHA-256 first ([`prefer_sha256`]).
//! - Trust: the Mozilla root programme as shipped by `webpki-roots` (no dependency on the host's certificate
//!   store), plus `extra_roots` from the configuration, for the simulator's or a test's own CA.
//! - ALPN (RFC 7301): we offer only `http/1.1`, so a server that also speaks HTTP/2 knows not to switch.
//! - Resumption: rustls's defaults (TLS 1.3 tickets, TLS 1.2 session ids and tickets), with room for more
//!   TLS 1.3 tickets than rustls keeps ([`TLS13_TICKETS_KEPT`]).
//!
//! The tickets and the SHA-256 suites are the pool's rule 8 (numbered in `pool.rs`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::crypto::hash::HashAlgorithm;
use rustls::{ClientConfig, NamedGroup, RootCertStore, SupportedCipherSuite};
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

    let mut provider = rustls::crypto::ring::default_provider();
    prefer_sha256(&mut provider.cipher_suites);
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::store(Arc::new(SessionStore {
        other: ClientSessionMemoryCache::new(8),
        tls13: Mutex::new(None),
    }));

    Ok(TlsConnector::from(Arc::new(config)))
}

/// Puts the cipher suites that hash with SHA-256 (AES-128-GCM, then ChaCha20-Poly1305) ahead of those with
/// SHA-384 (AES-256-GCM), keeping rustls's order otherwise. Servers usually follow the client's order.
///
/// Why: a handshake's key schedule is a few dozen HMACs, and every request and answer record is sealed or
/// opened. rustls lists AES-256-GCM-SHA384 first; ring computes SHA-384 in software, but SHA-256 with the
/// CPU's SHA extensions where it has them (x86-64 SHA-NI, Armv8). An upstream that hangs makes fanout
/// replace connections by the thousand, and there SHA-512's block function was the largest single cost
/// of the upstream thread (2.7% of the machine in the `overshoot` benchmark, as much again in the
/// simulator; SHA-256 is 0.5% on each side). Both suites are TLS 1.3's mandatory-to-implement or
/// recommended ones (RFC 8446 §9.1), and AES-128-GCM is what Go, Firefox and Chrome put first.
fn prefer_sha256(suites: &mut [SupportedCipherSuite]) {
    suites.sort_by_key(|suite| {
        let common = match suite {
            SupportedCipherSuite::Tls13(suite) => &suite.common,
            SupportedCipherSuite::Tls12(suite) => &suite.common,
        };
        common.hash_provider.algorithm() != HashAlgorithm::SHA256
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite;

    #[test]
    fn sha256_suites_come_first_and_none_is_lost() {
        let mut suites = rustls::crypto::ring::default_provider().cipher_suites;
        let before = suites.len();
        prefer_sha256(&mut suites);
        let names: Vec<CipherSuite> = suites.iter().map(|s| s.suite()).collect();
        assert_eq!(names.len(), before);
        assert_eq!(names[0], CipherSuite::TLS13_AES_128_GCM_SHA256);
        let sha384 = names
            .iter()
            .position(|n| format!("{n:?}").ends_with("SHA384"))
            .unwrap();
        assert!(names[sha384..]
            .iter()
            .all(|n| format!("{n:?}").ends_with("SHA384")));
    }
}
