//! The JetStream layout: which boards carry JetStream, and what follows from it.
//!
//! The record `layout` in the `cluster` bucket lists the JetStream boards (at most
//! `cluster.max_jetstream`, in the order they got it) and the peers to remove from the meta
//! group once their board is gone. Boards change it with compare-and-set: the board that
//! answers a join adds the newcomer while there is room, a board that leaves takes itself out
//! (and promotes a board without JetStream in its place), `remove` takes a dead board out.
//!
//! Every board follows it ([`follow`]) and makes its own nats-server match: routes = the
//! JetStream boards (itself included when it carries JetStream); the first growth of a one-board
//! cluster is a migration of the founder's standalone data into the cluster
//! ([`crate::migrate`]); a promotion restarts the server with JetStream on; a new JetStream board
//! elsewhere is a reload of the routes. The board holding the placer's lease keeps the rest
//! ([`keep`]): every stream at `min(3, JetStream boards)` replicas, and removed peers out of the
//! meta group once their board no longer answers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};

use super::{ClusterNode, Parts, engine_config, replicas_for};
use crate::kv::{self, Bucket, Change, KvError};
use crate::layout::LayoutError;
use crate::membership::{BoardState, View};

/// The key of the layout record in the `cluster` bucket.
pub const LAYOUT_KEY: &str = "layout";

/// Which boards carry JetStream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The JetStream boards, in the order they got it.
    pub jetstream: Vec<String>,
    /// JetStream peers to remove from the meta group once their board no longer answers.
    #[serde(default)]
    pub removed: Vec<String>,
}

/// A layout change that failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError<E> {
    /// The change itself refused.
    #[error(transparent)]
    Refused(E),
    /// The cluster could not store it.
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// The layout and its revision, as the stream leader has it.
pub async fn read(bucket: &Bucket) -> Result<Option<(Layout, u64)>, KvError> {
    Ok(bucket
        .entry_from_leader(LAYOUT_KEY)
        .await?
        .and_then(|e| Some((serde_json::from_slice(&e.value).ok()?, e.revision))))
}

/// The first layout of a cluster: its founder carries JetStream.
pub(super) async fn found(bucket: &Bucket, founder: &str) -> Result<(), KvError> {
    let layout = Layout {
        jetstream: vec![founder.to_owned()],
        removed: Vec::new(),
    };
    match bucket.create(LAYOUT_KEY, encode(&layout)).await {
        Err(e) if e.is_conflict() => Ok(()),
        other => other.map(|_| ()),
    }
}

fn encode(layout: &Layout) -> Bytes {
    Bytes::from(serde_json::to_vec(layout).unwrap_or_default())
}

/// Changes the layout with compare-and-set: `change` edits a copy and says whether it changed
/// anything (or refuses); retried from a fresh read when another board wrote first.
pub async fn change<E>(
    bucket: &Bucket,
    mut change: impl FnMut(&mut Layout) -> Result<bool, E>,
) -> Result<Layout, ChangeError<E>> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (mut layout, revision) = read(bucket).await?.unwrap_or_default();
        if !change(&mut layout).map_err(ChangeError::Refused)? {
            return Ok(layout);
        }
        let written = if revision == 0 {
            bucket.create(LAYOUT_KEY, encode(&layout)).await
        } else {
            bucket.update(LAYOUT_KEY, encode(&layout), revision).await
        };
        match written {
            Ok(_) => return Ok(layout),
            Err(e) if e.is_conflict() && attempts < 20 => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A board without JetStream that can take the place of one leaving: alive, not leaving, in
/// name order.
pub fn promotable(layout: &Layout, view: &View, leaving: &str) -> Option<String> {
    view.boards
        .iter()
        .filter(|(name, board)| {
            name.as_str() != leaving
                && !layout.jetstream.contains(name)
                && board.state == BoardState::Alive
                && board.info.as_ref().is_some_and(|i| !i.leaving)
        })
        .map(|(name, _)| name.clone())
        .next()
}

/// The route listeners of the JetStream boards (`None` while a record is missing).
fn routes_of(layout: &Layout, view: &View) -> Option<Vec<SocketAddr>> {
    layout
        .jetstream
        .iter()
        .map(|board| {
            let info = view.boards.get(board)?.info.as_ref()?;
            Some(SocketAddr::new(info.address, info.route_port))
        })
        .collect()
}

/// Follows the layout and makes this board's nats-server match it.
pub(super) async fn follow(node: Arc<ClusterNode>, parts: Arc<Parts>) {
    let mut changes = kv::follow(parts.cluster.clone());
    let mut view = parts.membership.watch();
    let mut layout: Option<Layout> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(Change::Put { key, value, .. }) if key == LAYOUT_KEY => {
                    layout = serde_json::from_slice(&value).ok();
                }
                Some(_) => continue,
                None => return,
            },
            changed = view.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let Some(layout) = layout.as_ref() else {
            continue;
        };
        let view = view.borrow().clone();
        if let Err(e) = apply(&node, layout, &view).await {
            tracing::warn!(error = %e, "cannot make nats-server match the cluster's layout; retrying");
        }
    }
}

async fn apply(node: &ClusterNode, layout: &Layout, view: &View) -> Result<(), String> {
    if node.leaving() {
        return Ok(());
    }
    // What the layout needs of the view is the record of every JetStream board (`routes_of`),
    // not the whole snapshot: waiting for `records_loaded` too stalled the founder's migration
    // when its watch of the boards bucket did not report being current (seen in ~2 of 10 runs
    // of the multi-board test; not understood yet, see the report of issue 15).
    if !view.records_loaded {
        tracing::debug!("the boards' records are not all loaded yet");
    }
    let me = node.board();
    let Some(routes) = routes_of(layout, view) else {
        tracing::debug!(jetstream = ?layout.jetstream, known = ?view.boards.keys().collect::<Vec<_>>(), "layout not followed yet: a JetStream board's record is missing");
        return Ok(());
    };
    let jetstream = layout.jetstream.contains(&me);
    let clustered = layout.jetstream.len() > 1 || !jetstream;
    let routes = if clustered { routes } else { Vec::new() };
    let current = node.files().node;
    let same_routes =
        current.routes.iter().collect::<BTreeSet<_>>() == routes.iter().collect::<BTreeSet<_>>();
    if current.jetstream == jetstream && current.clustered == clustered && same_routes {
        return Ok(());
    }
    let files = node.update_node_file(|n| {
        n.jetstream = jetstream;
        n.clustered = clustered;
        n.routes.clone_from(&routes);
    });
    let config = {
        let (files, settings) = (files.clone(), node.settings().clone());
        tokio::task::spawn_blocking(move || engine_config(&files, &settings))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| bramble_base::error_chain(&e))?
    };
    let migration = !current.clustered && clustered;
    let result = if migration {
        tracing::info!(
            ?routes,
            "a second JetStream board: moving this board's data into the cluster"
        );
        node.server()
            .migrate(config, replicas_for(layout.jetstream.len()))
            .await
    } else if current.jetstream != jetstream || current.clustered != clustered {
        tracing::info!(
            jetstream,
            ?routes,
            "restarting nats-server for the new layout"
        );
        node.server().restart(config).await
    } else {
        tracing::info!(?routes, "new routes");
        node.server().reload_routes(routes).await
    };
    // A migration that did not finish runs clustered already and is finished in the
    // background: its configuration is kept. Any other failure changed nothing.
    if result.is_err() && !migration {
        node.update_node_file(|n| *n = current);
        return result;
    }
    node.update_me(|me| me.jetstream = jetstream);
    let state_dir = node.settings().state_dir.clone();
    tokio::task::spawn_blocking(move || files.node.save(&state_dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| bramble_base::error_chain(&e))?;
    result
}

/// While this board holds the placer's lease: replicas, and removed peers.
pub(super) async fn keep(node: Arc<ClusterNode>, parts: Arc<Parts>) {
    let mut lease = parts.lease.watch();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if lease
            .wait_for(crate::lease::LeaseStatus::is_holder)
            .await
            .is_err()
        {
            return;
        }
        tick.tick().await;
        if !lease.borrow().is_holder() {
            continue;
        }
        let Ok(Some((layout, _))) = read(&parts.cluster).await else {
            continue;
        };
        keep_replicas(&node, &layout).await;
        let view = parts.membership.watch().borrow().clone();
        remove_gone_peers(&node, &parts, &layout, &view).await;
    }
}

async fn keep_replicas(node: &ClusterNode, layout: &Layout) {
    if !node.files().node.clustered {
        // A standalone server (the founder before its migration) holds one replica only; the
        // migration sets the replicas itself.
        return;
    }
    let replicas = replicas_for(layout.jetstream.len());
    let names: Vec<String> = match node.jetstream().stream_names().try_collect().await {
        Ok(names) => names,
        Err(e) => {
            tracing::debug!(error = %e, "listing streams");
            return;
        }
    };
    for stream in names {
        // Replicas on boards out of the layout (one that left or was removed) go first, so a
        // shrink keeps the boards that stay.
        if let Ok(placement) = crate::layout::stream_placement(node.jetstream(), &stream).await {
            for (peer, _) in &placement.peers {
                if layout.jetstream.contains(peer) {
                    continue;
                }
                match crate::layout::remove_stream_peer(node.jetstream(), &stream, peer).await {
                    Ok(()) => {
                        tracing::info!(%stream, %peer, "replica of a board out of the layout removed");
                    }
                    Err(e) => {
                        tracing::debug!(%stream, %peer, error = %bramble_base::error_chain(&e), "cannot remove the replica yet");
                    }
                }
            }
        }
        match crate::layout::ensure_stream_replicas(node.jetstream(), &stream, replicas).await {
            Ok(before) if before != replicas => {
                tracing::info!(%stream, before, replicas, "stream replicas changed");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%stream, replicas, error = %bramble_base::error_chain(&e), "cannot change the stream's replicas yet");
            }
        }
    }
}

async fn remove_gone_peers(node: &ClusterNode, parts: &Parts, layout: &Layout, view: &View) {
    let gone: Vec<&String> = layout
        .removed
        .iter()
        .filter(|b| {
            view.boards
                .get(*b)
                .is_none_or(|v| v.state != BoardState::Alive)
        })
        .collect();
    if gone.is_empty() {
        return;
    }
    let system = match node.system_client().await {
        Ok(client) => client,
        Err(e) => {
            tracing::debug!(error = %bramble_base::error_chain(&e), "system account");
            return;
        }
    };
    for peer in gone {
        match crate::layout::remove_peer(&system, peer).await {
            Ok(()) | Err(LayoutError::NotAPeer { .. }) => {
                tracing::info!(%peer, "JetStream peer removed");
                let removed = change(&parts.cluster, |l| {
                    let before = l.removed.len();
                    l.removed.retain(|b| b != peer);
                    Ok::<_, std::convert::Infallible>(l.removed.len() != before)
                })
                .await;
                if let Err(e) = removed {
                    tracing::debug!(error = %e, "updating the layout");
                }
            }
            Err(e) => {
                tracing::debug!(%peer, error = %bramble_base::error_chain(&e), "removing the JetStream peer");
            }
        }
    }
}
