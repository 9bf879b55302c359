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
//! - [`remove_stream_peer`] takes one server's replica out of a stream's group
//!   (`$JS.API.STREAM.PEER.REMOVE`). Before a stream shrinks, the replicas on boards that left
//!   go this way: on a shrink alone, 2.9.10 keeps the leader and then the first *online* peers
//!   of the group, which can be the leaving board's while its server still runs — the stream
//!   then stops committing the moment that server stops.
//! - [`hand_over_leadership`] has a server give up what it leads (streams, the meta group)
//!   before it stops for good, so the others elect new leaders while it still votes and no
//!   write meets a leaderless stream.

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
    let handle = js
        .get_stream(stream)
        .await
        .map_err(|e| classify(stream, "looking up", e))?;
    // Looking the stream up is the info request: its answer is the info.
    Ok(handle.cached_info().clone())
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

/// What [`hand_over_leadership`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandedOver {
    /// Streams whose leadership it gave up.
    pub streams: Vec<String>,
    /// Whether it led the meta group and gave that up.
    pub meta: bool,
    /// What still had no other leader when it stopped waiting.
    pub leaderless: Vec<String>,
}

/// Has `server` give up leading streams and then the meta group, and waits (at most `timeout`
/// for the streams, and again for the meta group) until others lead them: a board about to
/// leave calls this before it stops its server, so writes never wait for an election after it
/// went. `system` is a client of the system account (the meta group's step-down is a
/// system-account API). Durable consumers are left alone: after a step-down 2.9.10 left one
/// without a leader for more than 10 s, longer than the election that follows a stop. Best
/// effort: what could not be handed over is elected after the server stops.
pub async fn hand_over_leadership(
    js: &jetstream::Context,
    system: &async_nats::Client,
    server: &str,
    timeout: Duration,
) -> HandedOver {
    use futures::TryStreamExt as _;
    let mut done = HandedOver::default();
    let deadline = Instant::now() + timeout;
    // Streams first: listing them needs the meta leader.
    let step_downs = async {
        let names: Vec<String> = match js.stream_names().try_collect().await {
            Ok(names) => names,
            Err(e) => {
                tracing::debug!(error = %e, "listing the streams to hand over");
                Vec::new()
            }
        };
        let mut stepped = Vec::new();
        for name in names {
            let led = tokio::time::timeout(POLL, stream_placement(js, &name))
                .await
                .is_ok_and(|p| p.is_ok_and(|p| p.leader.as_deref() == Some(server)));
            if led
                && step_down(
                    &js.client(),
                    format!("$JS.API.STREAM.LEADER.STEPDOWN.{name}"),
                )
                .await
            {
                stepped.push(name);
            }
        }
        stepped
    };
    let stepped = tokio::time::timeout(timeout, step_downs)
        .await
        .unwrap_or_else(|_| {
            done.leaderless.push("(streams not all listed)".to_owned());
            Vec::new()
        });
    // The step-downs answer once the leader stepped down; wait for the new leaders.
    for stream in stepped {
        loop {
            // A short wait per question: on 2.10.27 one asked right after the step-down can
            // go unanswered (nobody leads yet) while the next is answered.
            let leader = match tokio::time::timeout(POLL, stream_placement(js, &stream)).await {
                Ok(Ok(p)) => p.leader,
                Ok(Err(e)) => {
                    tracing::debug!(%stream, error = %e, "stream info after the step-down");
                    None
                }
                Err(_) => None,
            };
            if leader.as_deref().is_some_and(|l| l != server) {
                done.streams.push(stream);
                break;
            }
            if Instant::now() >= deadline {
                tracing::debug!(%stream, ?leader, "no other leader yet");
                done.leaderless.push(stream);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if meta_leader(system).await.as_deref() == Some(server)
        && step_down(system, "$JS.API.META.LEADER.STEPDOWN".to_owned()).await
    {
        done.meta = true;
        let deadline = Instant::now() + timeout;
        while meta_leader(system)
            .await
            .is_none_or(|leader| leader == server)
        {
            if Instant::now() >= deadline {
                done.leaderless.push("(meta group)".to_owned());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    done
}

/// How long [`hand_over_leadership`] waits for one answer while it polls for new leaders.
const POLL: Duration = Duration::from_millis(500);

/// The meta group's leader, as the server `system` is connected to (a JetStream server) says.
async fn meta_leader(system: &async_nats::Client) -> Option<String> {
    #[derive(Deserialize)]
    struct Reply {
        data: Jsz,
    }
    #[derive(Deserialize)]
    struct Jsz {
        meta_cluster: Option<Meta>,
    }
    #[derive(Deserialize)]
    struct Meta {
        leader: Option<String>,
    }
    let reply = tokio::time::timeout(
        POLL,
        system.request(
            format!("$SYS.REQ.SERVER.{}.JSZ", system.server_info().server_id),
            "{}".into(),
        ),
    )
    .await
    .ok()?
    .ok()?;
    let reply: Reply = serde_json::from_slice(&reply.payload).ok()?;
    reply.data.meta_cluster?.leader.filter(|l| !l.is_empty())
}

/// Sends a JetStream step-down request; true when it was accepted.
async fn step_down(client: &async_nats::Client, subject: String) -> bool {
    #[derive(Deserialize)]
    struct Reply {
        #[serde(default)]
        success: bool,
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(subject.clone(), bytes::Bytes::new()),
    )
    .await;
    match answer {
        Ok(Ok(message)) => {
            let accepted =
                serde_json::from_slice::<Reply>(&message.payload).is_ok_and(|r| r.success);
            if !accepted {
                tracing::debug!(%subject, answer = %String::from_utf8_lossy(&message.payload), "step-down refused");
            }
            accepted
        }
        Ok(Err(e)) => {
            tracing::debug!(%subject, error = %e, "step-down failed");
            false
        }
        Err(_) => {
            tracing::debug!(%subject, "step-down unanswered");
            false
        }
    }
}

/// Takes `peer`'s replica out of `stream`'s group: the meta leader replaces it with a server
/// not in the group when there is one, or the group shrinks by one.
pub async fn remove_stream_peer(
    js: &jetstream::Context,
    stream: &str,
    peer: &str,
) -> Result<(), LayoutError> {
    #[derive(Deserialize)]
    struct Reply {
        #[serde(default)]
        success: bool,
        error: Option<ApiError>,
    }
    let body = serde_json::json!({ "peer": peer }).to_string();
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        js.client()
            .request(format!("$JS.API.STREAM.PEER.REMOVE.{stream}"), body.into()),
    )
    .await
    .map_err(|_| LayoutError::NoQuorum {
        stream: stream.to_owned(),
    })?
    .map_err(|e| classify(stream, "removing a peer", e))?;
    let reply: Reply = serde_json::from_slice(&reply.payload).map_err(|e| LayoutError::Nats {
        op: format!("reading the answer to removing peer {peer} of stream {stream}"),
        source: Box::new(e),
    })?;
    match reply.error {
        Some(e) => Err(LayoutError::RemoveRefused {
            server: peer.to_owned(),
            message: format!("stream {stream}: {}", e.description),
        }),
        None if reply.success => Ok(()),
        None => Err(LayoutError::RemoveRefused {
            server: peer.to_owned(),
            message: format!("stream {stream}: the server did not confirm"),
        }),
    }
}
