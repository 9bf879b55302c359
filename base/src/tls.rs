//! The crypto provider behind every TLS connection bramble makes or accepts: rustls with *ring*
//! (registry pulls, https callbacks, the command line, board-to-board traffic, NATS, the
//! cluster CA). One place names it.
//!
//! reqwest (and oci-client through it) is built without a provider of its own and takes the
//! process default, panicking when there is none: whatever builds a reqwest client calls
//! [`install_crypto_provider`] first. It is cheap after the first call, so each constructor
//! calls it rather than trusting that `main` did.

use std::sync::{Arc, Once};

use rustls::crypto::CryptoProvider;

/// The provider, for configurations built with an explicit one
/// (`ServerConfig::builder_with_provider` and the like).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs [`provider`] as the process default rustls provider. Idempotent: later calls (and
/// calls after something else installed a default) change nothing.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means a default is installed already, which is all this asks for.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suites(provider: &CryptoProvider) -> Vec<rustls::CipherSuite> {
        provider.cipher_suites.iter().map(|s| s.suite()).collect()
    }

    #[test]
    fn installs_the_provider_as_process_default_once() {
        install_crypto_provider();
        install_crypto_provider();
        let installed = CryptoProvider::get_default().map(|p| suites(p));
        assert_eq!(installed, Some(suites(&provider())));
    }
}
