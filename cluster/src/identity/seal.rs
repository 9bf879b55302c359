//! Sealing secret values for the shared state: XChaCha20-Poly1305 under the cluster's 32-byte
//! key, with the function's (or secret's) name as associated data, so a sealed value moved to
//! another name does not open.
//!
//! Sealed format: `0x01` (format version) ‖ 24-byte random nonce ‖ ciphertext with tag.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// The cluster's key for sealing secrets. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealKey(#[serde(with = "super::b64")] [u8; 32]);

/// A sealed value that does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not something [`SealKey::seal`] made.
    #[error("sealed value is malformed ({0})")]
    Malformed(&'static str),
    /// The key or the associated name is wrong, or the value was altered.
    #[error("sealed value does not open for {name:?}: wrong cluster key, wrong name, or altered")]
    Refused {
        /// The name it was opened for.
        name: String,
    },
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<hidden>)")
    }
}

impl SealKey {
    /// A new random key.
    pub fn generate() -> SealKey {
        SealKey(rand::random())
    }

    /// Seals `plaintext` bound to `name`.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: name.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens a value sealed for `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Malformed("empty"))?;
        if version != VERSION {
            return Err(SealError::Malformed("unknown format version"));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed("too short"));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SealError::Refused {
                name: name.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let key = SealKey::generate();
        let sealed = key.seal("fn-a", b"hunter2");
        assert_ne!(&sealed[1 + NONCE_LEN..], b"hunter2");
        assert_eq!(key.open("fn-a", &sealed).unwrap(), b"hunter2");
        assert_eq!(key.open("fn-a", &key.seal("fn-a", b"")).unwrap(), b"");
        // A fresh nonce each time.
        assert_ne!(key.seal("fn-a", b"x"), key.seal("fn-a", b"x"));
    }

    #[test]
    fn refuses_wrong_key_swapped_name_and_tampering() {
        let key = SealKey::generate();
        let sealed = key.seal("fn-a", b"hunter2");
        let other = SealKey::generate();
        assert!(matches!(
            other.open("fn-a", &sealed),
            Err(SealError::Refused { .. })
        ));
        assert!(matches!(
            key.open("fn-b", &sealed),
            Err(SealError::Refused { .. })
        ));
        let mut altered = sealed.clone();
        if let Some(last) = altered.last_mut() {
            *last ^= 1;
        }
        assert!(matches!(
            key.open("fn-a", &altered),
            Err(SealError::Refused { .. })
        ));
        assert!(matches!(
            key.open("fn-a", &[]),
            Err(SealError::Malformed(_))
        ));
        assert!(matches!(
            key.open("fn-a", &[2; 64]),
            Err(SealError::Malformed(_))
        ));
        assert!(matches!(
            key.open("fn-a", &sealed[..20]),
            Err(SealError::Malformed(_))
        ));
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", SealKey::generate()), "SealKey(<hidden>)");
    }
}
