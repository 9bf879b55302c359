//! Join tokens: `bramble1.<cluster>.<payload>`, the payload being base64url (no padding) of a
//! 16-byte join secret, the first 16 bytes of the CA certificate's SHA-256 and a 4-byte
//! checksum of everything before it (so a mistyped token is told apart from a wrong one).
//!
//! The token lets a new board find and trust the first one: it names the cluster, proves the
//! holder was given the token (the secret), and pins the CA the new board must see. It never
//! carries the CA key or any credential.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::names;

const PREFIX: &str = "bramble1";
const SECRET_LEN: usize = 16;
const FINGERPRINT_LEN: usize = 16;
const CHECKSUM_LEN: usize = 4;
const PAYLOAD_LEN: usize = SECRET_LEN + FINGERPRINT_LEN + CHECKSUM_LEN;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The cluster it joins.
    pub cluster: String,
    /// The join secret.
    pub(super) secret: [u8; SECRET_LEN],
    /// The first 16 bytes of the CA certificate's SHA-256.
    pub(super) ca_fingerprint: [u8; FINGERPRINT_LEN],
}

/// A token that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a bramble join token at all.
    #[error("not a bramble join token: {0}")]
    Malformed(&'static str),
    /// The checksum does not match: mistyped or cut off.
    #[error(
        "the join token is damaged (its checksum does not match): copy it again from `bramble cluster init` or `bramble cluster token`"
    )]
    Damaged,
    /// A token of another cluster.
    #[error("the join token is for cluster {token:?}, but this is cluster {ours:?}")]
    OtherCluster {
        /// The token's cluster.
        token: String,
        /// This cluster.
        ours: String,
    },
    /// The secret is not this cluster's.
    #[error("the join token's secret is not cluster {cluster:?}'s (an old or forged token)")]
    WrongSecret {
        /// This cluster.
        cluster: String,
    },
    /// The CA the joining board was shown is not the one the token pins.
    #[error(
        "the cluster CA presented does not match the join token's fingerprint: refusing to trust it"
    )]
    CaMismatch,
}

impl JoinToken {
    pub(super) fn new(cluster: &str, secret: [u8; SECRET_LEN], ca_sha256: &[u8; 32]) -> JoinToken {
        let mut ca_fingerprint = [0u8; FINGERPRINT_LEN];
        ca_fingerprint.copy_from_slice(&ca_sha256[..FINGERPRINT_LEN]);
        JoinToken {
            cluster: cluster.to_owned(),
            secret,
            ca_fingerprint,
        }
    }

    /// Whether a CA certificate's SHA-256 is the one this token pins.
    pub fn pins(&self, ca_sha256: &[u8; 32]) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.ca_fingerprint.ct_eq(&ca_sha256[..FINGERPRINT_LEN]))
    }

    fn checksum(cluster: &str, body: &[u8]) -> [u8; CHECKSUM_LEN] {
        let digest = Sha256::new()
            .chain_update(PREFIX)
            .chain_update(cluster)
            .chain_update(body)
            .finalize();
        let mut sum = [0u8; CHECKSUM_LEN];
        sum.copy_from_slice(&digest[..CHECKSUM_LEN]);
        sum
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut payload = Vec::with_capacity(PAYLOAD_LEN);
        payload.extend_from_slice(&self.secret);
        payload.extend_from_slice(&self.ca_fingerprint);
        let sum = JoinToken::checksum(&self.cluster, &payload);
        payload.extend_from_slice(&sum);
        write!(
            f,
            "{PREFIX}.{}.{}",
            self.cluster,
            URL_SAFE_NO_PAD.encode(payload)
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("cluster", &self.cluster)
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let mut parts = text.split('.');
        if parts.next() != Some(PREFIX) {
            return Err(TokenError::Malformed(
                "it does not start with \"bramble1.\"",
            ));
        }
        let cluster = parts
            .next()
            .ok_or(TokenError::Malformed("the cluster name is missing"))?;
        let payload = parts
            .next()
            .ok_or(TokenError::Malformed("the secret part is missing"))?;
        if parts.next().is_some() {
            return Err(TokenError::Malformed("it has too many parts"));
        }
        names::validate("cluster", cluster)
            .map_err(|_| TokenError::Malformed("the cluster name is not valid"))?;
        let in_alphabet = payload
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !in_alphabet {
            return Err(TokenError::Malformed("the secret part is not base64url"));
        }
        // Undecodable lengths come from cutting or extending a real token.
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Damaged)?;
        if bytes.len() != PAYLOAD_LEN {
            // A cut-off or extended payload is the common typo.
            return Err(TokenError::Damaged);
        }
        let (body, sum) = bytes.split_at(SECRET_LEN + FINGERPRINT_LEN);
        if JoinToken::checksum(cluster, body) != sum {
            return Err(TokenError::Damaged);
        }
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(&body[..SECRET_LEN]);
        let mut ca_fingerprint = [0u8; FINGERPRINT_LEN];
        ca_fingerprint.copy_from_slice(&body[SECRET_LEN..]);
        Ok(JoinToken {
            cluster: cluster.to_owned(),
            secret,
            ca_fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken::new("shelf", [7; 16], &[9; 32])
    }

    #[test]
    fn round_trips_and_is_short() {
        let text = token().to_string();
        assert!(text.starts_with("bramble1.shelf."), "{text}");
        assert!(text.len() < 70, "{} characters: {text}", text.len());
        let parsed: JoinToken = text.parse().unwrap();
        assert_eq!(parsed, token());
        assert!(parsed.pins(&[9; 32]));
        assert!(!parsed.pins(&[8; 32]));
        // Surrounding white space (a paste) is fine.
        assert_eq!(format!("  {text}\n").parse::<JoinToken>().unwrap(), token());
    }

    #[test]
    fn mistyped_tokens_are_damaged_not_wrong() {
        let text = token().to_string();
        let mut chars: Vec<char> = text.chars().collect();
        let i = chars.len() - 5;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(typo.parse::<JoinToken>(), Err(TokenError::Damaged));
        assert_eq!(
            text[..text.len() - 3].parse::<JoinToken>(),
            Err(TokenError::Damaged)
        );
        // Renaming the cluster in the text breaks the checksum too.
        let renamed = text.replacen(".shelf.", ".other.", 1);
        assert_eq!(renamed.parse::<JoinToken>(), Err(TokenError::Damaged));
    }

    #[test]
    fn garbage_is_malformed() {
        for text in [
            "",
            "hello",
            "bramble2.shelf.AAAA",
            "bramble1",
            "bramble1.shelf",
            "bramble1.Shelf.AAAA",
            "bramble1.shelf.!!!!",
            "bramble1.shelf.AAAA.BBBB",
        ] {
            assert!(
                matches!(text.parse::<JoinToken>(), Err(TokenError::Malformed(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", token()).contains("7, 7"));
    }
}
