//! The cluster's identity and every board's: names, secrets, the CA, credentials, the sealing
//! key, join tokens.
//!
//! - [`ClusterIdentity::init`] (on the first board, `bramble cluster init`) makes the cluster
//!   name, a random 32-byte cluster secret, a CA (ECDSA P-256, see `ca.rs`), the cluster-wide
//!   route user and a 32-byte [`SealKey`]. It is saved as a root-only (0600) JSON file under
//!   `<state_dir>/cluster/` ([`ClusterIdentity::save`]/[`load`](ClusterIdentity::load); a file
//!   readable by others is refused).
//! - [`ClusterIdentity::join_token`] gives the short string a new board needs (see `token.rs`);
//!   [`ClusterIdentity::check_token`] checks one that a joining board presents (another
//!   cluster's, a forged or an old secret: typed [`TokenError`]s); [`JoinToken::pins`] lets the
//!   joining board check the CA it is shown.
//! - [`ClusterIdentity::issue_board`] signs a board certificate (IP SANs for its addresses,
//!   server + client auth for mutual route TLS) and makes the board's own NATS users.
//!
//! NATS credentials, as chosen: one **route** user for the whole cluster (every server must
//! accept every other's routes; route TLS is mutual too, so a route also needs a certificate
//! the cluster CA signed), and per board a **client** user and a **system** user that never
//! leave the board — its server listens for clients on loopback only, so no other board ever
//! needs them, and a leaked board file does not open the others' servers to clients.

mod ca;
mod seal;
mod token;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};

pub use ca::CertAndKey;
pub use seal::{SealError, SealKey};
pub use token::{JoinToken, TokenError};

use crate::engine::{Credentials, RouteTls};
use crate::names::{self, NameError};

/// An identity that cannot be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A cluster or board name that is not allowed.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Certificate generation or signing failed.
    #[error("certificate operation failed")]
    Tls(#[source] rcgen::Error),
    /// A stored certificate that is not PEM.
    #[error("stored certificate is not a PEM certificate")]
    BadCertificate,
    /// This board's identity has no CA key (only the boards that hold it sign certificates).
    #[error(
        "this board does not hold the cluster CA's key: issue board certificates on a board that does"
    )]
    NoCaKey,
    /// Reading or writing an identity file.
    #[error("{action} {path:?}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An identity file that others can read.
    #[error(
        "{path:?} is readable by users other than root (mode {mode:o}): refusing to use cluster secrets from it; chmod 600 it"
    )]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// An identity file that is not what bramble wrote.
    #[error("{path:?} is not a valid identity file")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// What the whole cluster shares (the boards that carry it keep it root-only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// The cluster's name.
    pub cluster: String,
    /// The cluster secret (join secrets are derived from it).
    #[serde(with = "b64")]
    secret: [u8; 32],
    /// The CA certificate and key (`key_pem` is empty on a board without the key).
    pub ca: CertAndKey,
    /// The route user every server accepts.
    pub route: Credentials,
    /// The key that seals secret values in the shared state.
    pub seal_key: SealKey,
}

/// What one board has for itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoardIdentity {
    /// The board's name.
    pub board: String,
    /// Its certificate and key for route TLS.
    pub tls: CertAndKey,
    /// Its own client user (account `BRAMBLE`).
    pub client: Credentials,
    /// Its own system-account user.
    pub system: Credentials,
}

impl ClusterIdentity {
    /// A new cluster named `cluster`.
    pub fn init(cluster: &str) -> Result<ClusterIdentity, IdentityError> {
        names::validate("cluster", cluster)?;
        Ok(ClusterIdentity {
            cluster: cluster.to_owned(),
            secret: rand::random(),
            ca: ca::generate_ca(cluster)?,
            route: Credentials {
                user: "route".into(),
                password: random_password(),
            },
            seal_key: SealKey::generate(),
        })
    }

    /// The join token (long-lived: derived from the cluster secret, valid until the secret
    /// changes).
    pub fn join_token(&self) -> Result<JoinToken, IdentityError> {
        Ok(JoinToken::new(
            &self.cluster,
            self.join_secret(),
            &ca::fingerprint(&self.ca.cert_pem)?,
        ))
    }

    /// Checks a token a joining board presents.
    pub fn check_token(&self, token: &JoinToken) -> Result<(), TokenError> {
        use subtle::ConstantTimeEq as _;
        if token.cluster != self.cluster {
            return Err(TokenError::OtherCluster {
                token: token.cluster.clone(),
                ours: self.cluster.clone(),
            });
        }
        if !bool::from(token.secret.ct_eq(&self.join_secret())) {
            return Err(TokenError::WrongSecret {
                cluster: self.cluster.clone(),
            });
        }
        let fingerprint = ca::fingerprint(&self.ca.cert_pem).map_err(|_| TokenError::CaMismatch)?;
        if !token.pins(&fingerprint) {
            return Err(TokenError::CaMismatch);
        }
        Ok(())
    }

    /// SHA-256 of the CA certificate (what a joining board compares with its token).
    pub fn ca_fingerprint(&self) -> Result<[u8; 32], IdentityError> {
        ca::fingerprint(&self.ca.cert_pem)
    }

    fn join_secret(&self) -> [u8; 16] {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(b"bramble join secret v1\0")
            .chain_update(self.cluster.as_bytes())
            .chain_update(self.secret)
            .finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        out
    }

    /// A certificate for board `name` at `addresses`, and its own NATS users.
    pub fn issue_board(
        &self,
        name: &str,
        addresses: &[IpAddr],
    ) -> Result<BoardIdentity, IdentityError> {
        names::validate("board", name)?;
        if self.ca.key_pem.is_empty() {
            return Err(IdentityError::NoCaKey);
        }
        Ok(BoardIdentity {
            board: name.to_owned(),
            tls: ca::issue(&self.cluster, &self.ca, name, addresses)?,
            client: Credentials {
                user: format!("board-{name}"),
                password: random_password(),
            },
            system: Credentials {
                user: format!("sys-{name}"),
                password: random_password(),
            },
        })
    }

    /// This identity without the CA key (what a board that does not sign certificates keeps).
    pub fn without_ca_key(&self) -> ClusterIdentity {
        let mut copy = self.clone();
        copy.ca.key_pem.clear();
        copy
    }

    /// `<state_dir>/cluster/cluster.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("cluster").join("cluster.json")
    }

    /// Saves to `path` (0600, atomically). Blocking.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        save_json(self, path)
    }

    /// Loads from `path`, refusing a file others can read. Blocking.
    pub fn load(path: &Path) -> Result<ClusterIdentity, IdentityError> {
        load_json(path)
    }
}

impl BoardIdentity {
    /// `<state_dir>/cluster/board.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("cluster").join("board.json")
    }

    /// Saves to `path` (0600, atomically). Blocking.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        save_json(self, path)
    }

    /// Loads from `path`, refusing a file others can read. Blocking.
    pub fn load(path: &Path) -> Result<BoardIdentity, IdentityError> {
        load_json(path)
    }

    /// Writes the PEM files nats-server reads for route TLS into `dir` (0600 key) and returns
    /// their paths. Blocking.
    pub fn write_tls_files(
        &self,
        cluster: &ClusterIdentity,
        dir: &Path,
    ) -> Result<RouteTls, IdentityError> {
        create_private_dir(dir)?;
        let tls = RouteTls {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("board.pem"),
            key_file: dir.join("board.key"),
        };
        for (path, text, mode) in [
            (&tls.ca_file, &cluster.ca.cert_pem, 0o644),
            (&tls.cert_file, &self.tls.cert_pem, 0o644),
            (&tls.key_file, &self.tls.key_pem, 0o600),
        ] {
            bramble_base::write_atomic(path, text.as_bytes(), mode).map_err(|source| {
                IdentityError::Io {
                    action: "writing",
                    path: path.clone(),
                    source,
                }
            })?;
        }
        Ok(tls)
    }
}

/// SHA-256 of a PEM certificate (what a join token pins of the CA).
pub fn ca_fingerprint_of(cert_pem: &str) -> Result<[u8; 32], IdentityError> {
    ca::fingerprint(cert_pem)
}

/// 32 random alphanumeric characters (≈190 bits).
pub(crate) fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| IdentityError::Io {
            action: "creating",
            path: dir.to_path_buf(),
            source,
        })
}

pub(crate) fn save_json<T: Serialize>(value: &T, path: &Path) -> Result<(), IdentityError> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let io = |source| IdentityError::Io {
        action: "writing",
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| io(std::io::Error::other(e)))?;
    bramble_base::write_atomic(path, &bytes, 0o600).map_err(io)
}

pub(crate) fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, IdentityError> {
    use std::os::unix::fs::MetadataExt;
    let io = |source| IdentityError::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::NotPrivate {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    serde_json::from_slice(&bytes).map_err(|source| IdentityError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Serde for fixed-size byte arrays as base64.
mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = STANDARD
            .decode(text)
            .map_err(|_| serde::de::Error::custom("not base64"))?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom(format!("expected {N} bytes")))
    }
}

#[cfg(test)]
mod tests;
