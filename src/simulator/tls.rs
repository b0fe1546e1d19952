//! The embedded test certificate chain and the TLS acceptor built from it.
//!
//! The simulator speaks HTTPS like the real upstream so that clients exercise their real TLS
//! path. **These keys are public (they are in the source) and for testing only**: never trust
//! [`CA_PEM`] outside tests and local simulation. `certs/README.md` has the openssl commands
//! that made them; a unit test proves rustls accepts the chain for `localhost` and 127.0.0.1.

use std::io;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The test CA (ECDSA P-256, valid until 2126). Its private key was discarded after signing.
pub(super) const CA_PEM: &str = include_str!("certs/ca.pem");
/// The server certificate: `localhost`, 127.0.0.1 and ::1, signed by [`CA_PEM`].
const LEAF_PEM: &str = include_str!("certs/leaf.pem");
/// The server certificate's private key (PKCS#8). Public, test-only.
const LEAF_KEY_PEM: &str = include_str!("certs/leaf.key.pem");

/// The test CA certificate, parsed, ready for a `rustls::RootCertStore`.
pub fn ca_certs() -> Vec<CertificateDer<'static>> {
    // The PEM is a constant checked by a unit test, not input: a failure here is a broken build.
    CertificateDer::pem_slice_iter(CA_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("the embedded CA certificate is valid PEM (unit-tested)")
}

/// A TLS acceptor presenting the leaf certificate, with the ring provider (no aws-lc).
pub(super) fn acceptor() -> io::Result<TlsAcceptor> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("simulator TLS {what}: {e}"),
        )
    };
    let chain = CertificateDer::pem_slice_iter(LEAF_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate", &e))?;
    let key =
        PrivateKeyDer::from_pem_slice(LEAF_KEY_PEM.as_bytes()).map_err(|e| invalid("key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("configuration", &e))?;
    // We only speak HTTP/1.1; saying so keeps a client that also offers h2 from choosing it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Session resumption with stateless tickets, as real HTTPS servers offer (Google's front ends among
    // them): a client that reconnects skips the certificate exchange. Without it every connection
    // replaced after a hang or a close costs a full handshake on both sides.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| invalid("session tickets", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
