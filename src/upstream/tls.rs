//! The TLS client configuration, built once and shared by every connection.
//!
//! - Crypto: rustls with the *ring* provider, chosen explicitly (`builder_with_provider`) so nothing depends on
//!   a process-wide default provider being installed.
//! - Versions: rustls's safe defaults (TLS 1.3 and 1.2).
//! - Trust: the Mozilla root programme as shipped by `webpki-roots` (no dependency on the host's certificate
//!   store), plus `extra_roots` from the configuration, for the simulator's or a test's own CA.
//! - ALPN (RFC 7301): we offer only `http/1.1`, so a server that also speaks HTTP/2 knows not to switch.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
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

    Ok(TlsConnector::from(Arc::new(config)))
}
