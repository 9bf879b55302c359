//! The JetStream layout: how many replicas each stream has, where they are, and which servers
//! are JetStream peers.
//!
//! - [`ensure_stream_replicas`] changes a stream's replica count in place (a stream
//!   configuration update; JetStream copies the data to the new peers). Buckets use it through
//!   [`crate::kv::Bucket::ensure_replicas`] when boards join (1 → 2 → 3).
//! - [`wait_stream_replicas`] waits until a stream has that many peers and all are current.
//! - [`remove_peer`] removes a JetStream server from the meta group (`$JS.API.SERVER.REMOVE`,
//!   a system-account API; the meta leader answers). Streams with a replica on it are
//!   re-placed on another JetStream server when one is free.
//! - [`stream_placement`] tells a stream's leader and replicas.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::Deserialize;

use crate::jserr::{self, Cause};

/// A layout operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// More replicas than JetStream servers can hold them.
    #[error(
        "stream {stream}: {replicas} replicas need {replicas} JetStream boards, the cluster has fewer"
    )]
    NotEnoughPeers {
        /// The stream.
        stream: String,
        /// The replicas asked for.
        replicas: usize,
    },
    /// The cluster cannot answer now.
    #[error("stream {stream}: the cluster has no quorum (no JetStream leader answered)")]
    NoQuorum {
        /// The stream.
        stream: String,
    },
    /// Waiting for replicas to catch up timed out.
    #[error("stream {stream}: replicas not current after {waited:?} (peers: {peers})")]
    NotCurrent {
        /// The stream.
        stream: String,
        /// How long.
        waited: Duration,
        /// The peers and their state.
        peers: String,
    },
    /// The server to remove is not a JetStream peer.
    #[error("{server} is not a JetStream peer of this cluster")]
    NotAPeer {
        /// The server.
        server: String,
    },
    /// The meta leader refused a peer removal.
    #[error("removing JetStream peer {server} was refused: {message}")]
    RemoveRefused {
        /// The server.
        server: String,
        /// The server's description.
        message: String,
    },
    /// Any other failure.
    #[error("{op} failed")]
    Nats {
        /// The operation.
        op: String,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
}

/// How long a replica change waits for JetStream to see enough peers.
pub const PEERS_GRACE: Duration = Duration::from_secs(5);

fn classify<E>(stream: &str, op: &str, e: E) -> LayoutError
where
    E: std::error::Error + Send + Sync + 'static,
{
    match jserr::cause(&e) {
        Cause::Code(jserr::INSUFFICIENT_RESOURCES | jserr::NO_SUITABLE_PEERS) => {
            LayoutError::NotEnoughPeers {
                stream: stream.to_owned(),
                replicas: 0,
            }
        }
        cause if jserr::is_unavailable(cause) => LayoutError::NoQuorum {
            stream: stream.to_owned(),
        },
        _ => LayoutError::Nats {
            op: format!("{op} of stream {stream}"),
            source: Box::new(e),
        },
    }
}

/// Sets `stream`'s replica count to `replicas`; returns the previous count. Does nothing when
/// it already has that many.
pub async fn ensure_stream_replicas(
    js: &jetstream::Context,
    stream: &str,
    replicas: usize,
) -> Result<usize, LayoutError> {
    let info = stream_info(js, stream).await?;
    let before = info.config.num_replicas;
    if before == replicas {
        return Ok(before);
    }
    let mut config = info.config;
    config.num_replicas = replicas;
    // Right after a board joins, the meta leader can still count it offline and answer "no
    // suitable peers" (2.10.27, seen in tests): retry for a while before giving up.
    let deadline = Instant::now() + PEERS_GRACE;
    loop {
        match js.update_stream(config.clone()).await {
            Ok(_) => return Ok(before),
            Err(e) => match classify(stream, "updating", e) {
                LayoutError::NotEnoughPeers { stream, .. } if Instant::now() > deadline => {
                    return Err(LayoutError::NotEnoughPeers { stream, replicas });
                }
                LayoutError::NotEnoughPeers { .. } => {}
                other => return Err(other),
            },
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The stream's information, from its leader.
async fn stream_info(
    js: &jetstream::Context,
    stream: &str,
) -> Result<jetstream::stream::Info, LayoutError> {
    let mut handle = js
        .get_stream(stream)
        .await
        .map_err(|e| classify(stream, "looking up", e))?;
    handle
        .info()
        .await
        .cloned()
        .map_err(|e| classify(stream, "reading", e))
}

/// Where a stream lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The leader's server name (`None`: no leader now).
    pub leader: Option<String>,
    /// Every peer (leader included) and whether it is current.
    pub peers: Vec<(String, bool)>,
    /// The configured replica count.
    pub replicas: usize,
    /// Messages in the stream.
    pub messages: u64,
}

/// The placement of `stream`, as the stream's leader reports it.
pub async fn stream_placement(
    js: &jetstream::Context,
    stream: &str,
) -> Result<Placement, LayoutError> {
    let info = stream_info(js, stream).await?;
    let mut peers = Vec::new();
    let mut leader = None;
    if let Some(cluster) = &info.cluster {
        leader = cluster.leader.clone().filter(|l| !l.is_empty());
        if let Some(l) = &leader {
            peers.push((l.clone(), true));
        }
        for p in &cluster.replicas {
            peers.push((p.name.clone(), p.current && !p.offline));
        }
    }
    Ok(Placement {
        leader,
        peers,
        replicas: info.config.num_replicas,
        messages: info.state.messages,
    })
}

/// Waits until `stream` has a leader and `replicas` peers that are all current.
pub async fn wait_stream_replicas(
    js: &jetstream::Context,
    stream: &str,
    replicas: usize,
    timeout: Duration,
) -> Result<Placement, LayoutError> {
    let started = Instant::now();
    loop {
        let last = match stream_placement(js, stream).await {
            Ok(p)
                if p.leader.is_some()
                    && p.peers.len() == replicas
                    && p.peers.iter().all(|(_, c)| *c) =>
            {
                return Ok(p);
            }
            Ok(p) => format!("{:?} (leader {:?})", p.peers, p.leader),
            Err(e) => e.to_string(),
        };
        if started.elapsed() > timeout {
            return Err(LayoutError::NotCurrent {
                stream: stream.to_owned(),
                waited: timeout,
                peers: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Deserialize)]
struct RemoveResponse {
    #[serde(default)]
    success: bool,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// The JetStream error code of "server is not a member of the cluster".
const SERVER_NOT_MEMBER: u64 = 10044;

/// Removes JetStream server `server` from the meta group. `system` must be a client of the
/// system account (see [`crate::engine::NatsServer::connect_system`]).
pub async fn remove_peer(system: &async_nats::Client, server: &str) -> Result<(), LayoutError> {
    let body = serde_json::json!({ "peer": server }).to_string();
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        system.request("$JS.API.SERVER.REMOVE", body.into()),
    )
    .await
    .map_err(|_| LayoutError::NoQuorum {
        stream: "(meta group)".into(),
    })?
    .map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders | async_nats::RequestErrorKind::TimedOut => {
            LayoutError::NoQuorum {
                stream: "(meta group)".into(),
            }
        }
        _ => LayoutError::Nats {
            op: format!("removing JetStream peer {server}"),
            source: Box::new(e),
        },
    })?;
    let response: RemoveResponse =
        serde_json::from_slice(&reply.payload).map_err(|e| LayoutError::Nats {
            op: format!("reading the answer to removing JetStream peer {server}"),
            source: Box::new(e),
        })?;
    match response.error {
        Some(e) if e.err_code == SERVER_NOT_MEMBER => Err(LayoutError::NotAPeer {
            server: server.to_owned(),
        }),
        Some(e) => Err(LayoutError::RemoveRefused {
            server: server.to_owned(),
            message: e.description,
        }),
        None if response.success => Ok(()),
        None => Err(LayoutError::RemoveRefused {
            server: server.to_owned(),
            message: "the server did not confirm".into(),
        }),
    }
}
