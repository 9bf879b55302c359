//! The join handshake, as the joining board sees it, and what the two boards exchange.
//!
//! 1. `GET http://ADDRESS/cluster/hello` (the answering board's API port, no credentials):
//!    [`Hello`] — the cluster's name, its CA certificate and the board port. The joining board
//!    checks the name against its token and the CA against the token's fingerprint (pinning:
//!    another CA is refused before anything secret is sent).
//! 2. `POST https://ADDRESS-HOST:BOARD-PORT/cluster/join` over TLS, trusting only that CA:
//!    [`JoinRequest`] — the token, the board's record (name, arch, versions, memory, hardware,
//!    labels) and its clock. The answering board ([`super::answer`]) refuses with a clear error
//!    and changes nothing, or answers [`JoinGrant`]: the cluster's identity, the board's
//!    certificate and NATS users, the cluster's API credentials, and the board's place (its
//!    address as the cluster sees it, whether it carries JetStream, its routes).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::files::{ClusterFiles, NodeFile};
use crate::identity::{BoardIdentity, ClusterIdentity, JoinToken};
use crate::membership::BoardInfo;

/// The public route a joining board asks first (API port, HTTP).
pub const HELLO_PATH: &str = "/cluster/hello";
/// The board-listener route of the handshake (TLS).
pub const JOIN_PATH: &str = "/cluster/join";
/// How long each step of the handshake may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// What any board of a cluster tells anyone who asks (nothing secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// The cluster's name.
    pub cluster: String,
    /// The answering board's name.
    pub board: String,
    /// The cluster CA's certificate (PEM).
    pub ca_pem: String,
    /// The port of the answering board's board-to-board listener.
    pub board_port: u16,
}

/// The API credentials of the cluster: one login for every board.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiLogin {
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for ApiLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiLogin")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// What a joining board sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    /// The join token, as printed.
    pub token: String,
    /// The board's record; its `address` is the one it asks for (configured), or unspecified
    /// to take the address the answering board sees it connect from.
    pub board: BoardInfo,
    /// Its API port.
    pub api_port: u16,
    /// Its board-listener port.
    pub board_port: u16,
    /// Its route port.
    pub route_port: u16,
    /// Its clock, milliseconds since the Unix epoch.
    pub clock_ms: u64,
}

/// What a joining board gets.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinGrant {
    /// The cluster's identity.
    pub cluster: ClusterIdentity,
    /// The board's certificate and NATS users.
    pub board: BoardIdentity,
    /// The board's place in the cluster.
    pub node: NodeFile,
    /// The cluster's API credentials.
    pub api: ApiLogin,
}

impl JoinGrant {
    /// The files the board keeps.
    pub fn files(&self) -> ClusterFiles {
        ClusterFiles {
            cluster: self.cluster.clone(),
            board: self.board.clone(),
            node: self.node.clone(),
        }
    }
}

/// Why a join did not happen (the joining board's view).
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The address is not a board's API address.
    #[error("{0}")]
    Address(String),
    /// The board at the address could not be reached.
    #[error("cannot reach {url}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The board at the address is not in a cluster, or not a bramble.
    #[error("{url} answered {status}: {message}")]
    NotACluster {
        /// The URL.
        url: String,
        /// Its status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The board at the address is in another cluster than the token's.
    #[error("the board at {address} is in cluster {theirs:?}, the token is for cluster {token:?}")]
    OtherCluster {
        /// The address.
        address: String,
        /// Its cluster.
        theirs: String,
        /// The token's cluster.
        token: String,
    },
    /// The CA shown is not the one the token pins.
    #[error(
        "the board at {address} shows a cluster CA that does not match the token's fingerprint: refusing to send anything to it"
    )]
    CaMismatch {
        /// The address.
        address: String,
    },
    /// The answering board refused (its message).
    #[error("{board} refused the join: {message}")]
    Refused {
        /// Who refused.
        board: String,
        /// HTTP status.
        status: u16,
        /// Why.
        message: String,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    /// An answer that is not what bramble sends.
    #[error("{url} answered something that is not a bramble {what}")]
    BadAnswer {
        /// The URL.
        url: String,
        /// What was expected.
        what: &'static str,
        /// Why it does not parse.
        #[source]
        source: reqwest::Error,
    },
}

/// `http://HOST:PORT` from `HOST:PORT`, `HOST` (port 8080) or `http://HOST:PORT[/]`.
pub fn api_url(address: &str) -> Result<String, String> {
    let trimmed = address.trim().trim_end_matches('/');
    let url = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| format!("{address:?} is not a board's address ({e}); write HOST:PORT"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(format!(
            "{address:?} is not a board's API address: write HOST:PORT or http://HOST:PORT"
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{address:?} names no host"))?;
    // bramble's API port when none is written, whatever the scheme's usual port.
    let port = parsed.port().unwrap_or(8080);
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Ok(format!("{}://{host}:{port}", parsed.scheme()))
}

/// Milliseconds since the Unix epoch by this board's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the joining board says about itself.
#[derive(Clone, Debug)]
pub struct Joiner {
    /// Its record (`address` unspecified: the cluster decides).
    pub board: BoardInfo,
    /// Its API port.
    pub api_port: u16,
    /// Its board port.
    pub board_port: u16,
    /// Its route port.
    pub route_port: u16,
}

/// Runs the handshake with the board at `address` (its API address) with `token`.
pub async fn join(token: &JoinToken, address: &str, me: Joiner) -> Result<JoinGrant, JoinError> {
    let base = api_url(address).map_err(JoinError::Address)?;
    bramble_base::tls::install_crypto_provider();
    let plain = reqwest::Client::builder()
        .timeout(STEP_TIMEOUT)
        .user_agent(concat!("bramble/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| JoinError::Unreachable {
            url: base.clone(),
            source,
        })?;
    let hello_url = format!("{base}{HELLO_PATH}");
    let response = plain
        .get(&hello_url)
        .send()
        .await
        .map_err(|source| JoinError::Unreachable {
            url: hello_url.clone(),
            source,
        })?;
    let status = response.status();
    if !status.is_success() {
        let message = response.text().await.unwrap_or_default().trim().to_owned();
        let message = if status == reqwest::StatusCode::NOT_FOUND {
            "it is not in a cluster (run `bramble cluster init` there first)".to_owned()
        } else {
            message
        };
        return Err(JoinError::NotACluster {
            url: hello_url,
            status: status.as_u16(),
            message,
        });
    }
    let hello: Hello = response
        .json()
        .await
        .map_err(|source| JoinError::BadAnswer {
            url: hello_url.clone(),
            what: "cluster hello",
            source,
        })?;
    if hello.cluster != token.cluster {
        return Err(JoinError::OtherCluster {
            address: address.to_owned(),
            theirs: hello.cluster,
            token: token.cluster.clone(),
        });
    }
    let pinned = crate::identity::ca_fingerprint_of(&hello.ca_pem)
        .is_ok_and(|fingerprint| token.pins(&fingerprint));
    if !pinned {
        return Err(JoinError::CaMismatch {
            address: address.to_owned(),
        });
    }

    // The board listener, on the host the API address named, trusting only the pinned CA.
    let api = reqwest::Url::parse(&base).map_err(|e| JoinError::Address(e.to_string()))?;
    let host = api.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let ip: IpAddr = match host.parse() {
        Ok(ip) => ip,
        Err(_) => tokio::net::lookup_host((host, hello.board_port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .map(|a| a.ip())
            .ok_or_else(|| JoinError::Address(format!("cannot resolve {host}")))?,
    };
    let board = SocketAddr::new(ip, hello.board_port);
    let tls = super::tls::joining_client_config(&hello.ca_pem)?;
    let client = reqwest::Client::builder()
        .timeout(STEP_TIMEOUT)
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|source| JoinError::Unreachable {
            url: board.to_string(),
            source,
        })?;
    let join_url = format!("https://{board}{JOIN_PATH}");
    let request = JoinRequest {
        token: token.to_string(),
        board: me.board,
        api_port: me.api_port,
        board_port: me.board_port,
        route_port: me.route_port,
        clock_ms: now_ms(),
    };
    let response = client
        .post(&join_url)
        .json(&request)
        .send()
        .await
        .map_err(|source| JoinError::Unreachable {
            url: join_url.clone(),
            source,
        })?;
    let status = response.status();
    if !status.is_success() {
        let message = response.text().await.unwrap_or_default().trim().to_owned();
        return Err(JoinError::Refused {
            board: hello.board,
            status: status.as_u16(),
            message,
        });
    }
    response
        .json::<JoinGrant>()
        .await
        .map_err(|source| JoinError::BadAnswer {
            url: join_url,
            what: "join grant",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_addresses_are_read_like_the_cli_reads_gateways() {
        assert_eq!(api_url("10.0.0.1:8080").unwrap(), "http://10.0.0.1:8080");
        assert_eq!(api_url("10.0.0.1").unwrap(), "http://10.0.0.1:8080");
        assert_eq!(api_url("pi1.local:9000").unwrap(), "http://pi1.local:9000");
        assert_eq!(
            api_url("http://pi1.local:9000/").unwrap(),
            "http://pi1.local:9000"
        );
        assert_eq!(api_url("[fe80::1]:8080").unwrap(), "http://[fe80::1]:8080");
        assert!(api_url("ftp://x").is_err());
        assert!(api_url("").is_err());
    }
}
