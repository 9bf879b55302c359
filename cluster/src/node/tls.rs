//! TLS between boards, under the cluster's CA (rustls with the crypto provider of the rest of
//! bramble, [`bramble_base::tls::provider`]).
//!
//! - [`server_config`]: the board listener's; the board's certificate, and client certificates
//!   the CA signed asked of every peer — but not required, so that a board joining (which has
//!   no certificate yet) can reach the join route; routes for boards only check that one was
//!   shown ([`bramble_gateway::BoardPeer`]).
//! - [`client_config`]: what a board proxies and fetches with: trusts the CA only, and shows
//!   the board's certificate.
//! - [`joining_client_config`]: what a board that joins uses: trusts only the CA the token
//!   pinned, shows no certificate.

use std::sync::Arc;

use bramble_base::tls::provider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use crate::identity::{BoardIdentity, ClusterIdentity};

/// A TLS setup that cannot be made from the stored identities.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM certificate or key that does not parse.
    #[error("the stored {what} is not valid PEM")]
    Pem {
        /// What it is.
        what: &'static str,
    },
    /// rustls refused the setup.
    #[error("TLS setup failed")]
    Rustls(#[source] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verification setup failed")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|_| TlsError::Pem {
        what: "CA certificate",
    })?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(TlsError::Rustls)?;
    Ok(roots)
}

fn board_chain(
    board: &BoardIdentity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert = CertificateDer::from_pem_slice(board.tls.cert_pem.as_bytes()).map_err(|_| {
        TlsError::Pem {
            what: "board certificate",
        }
    })?;
    let key = PrivateKeyDer::from_pem_slice(board.tls.key_pem.as_bytes())
        .map_err(|_| TlsError::Pem { what: "board key" })?;
    Ok((vec![cert], key))
}

/// The board listener's TLS configuration.
pub fn server_config(
    cluster: &ClusterIdentity,
    board: &BoardIdentity,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&cluster.ca.cert_pem)?),
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()
    .map_err(TlsError::Verifier)?;
    let (chain, key) = board_chain(board)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A board's client TLS configuration (proxying, fetching).
pub fn client_config(
    cluster: &ClusterIdentity,
    board: &BoardIdentity,
) -> Result<rustls::ClientConfig, TlsError> {
    let (chain, key) = board_chain(board)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_root_certificates(roots(&cluster.ca.cert_pem)?)
        .with_client_auth_cert(chain, key)
        .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The client TLS configuration of a board that joins: trusts only `ca_pem`.
pub fn joining_client_config(ca_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth())
}
