//! The join handshake as the answering board sees it: every check first, then the new board's
//! record (which reserves its name: compare-and-set), then its place in the layout; the grant
//! only once both are stored. A refusal changes nothing.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;

use super::files::NodeFile;
use super::join::{JoinGrant, JoinRequest};
use super::layout::{self, ChangeError};
use super::{ClusterNode, Refusal};
use crate::identity::JoinToken;
use crate::membership::BoardInfo;
use crate::names;

/// Clocks further apart than this are refused: a board whose clock is far off (a Pi without
/// a real-time clock that booted offline) shows wrong times in every log and status, and a
/// certificate or a lease judged by it would be wrong too.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal::new(status, message)
}

fn no_quorum(e: &crate::kv::KvError) -> Refusal {
    refuse(
        503,
        format!(
            "the cluster cannot store the new board now (it has no quorum?): {}; nothing was changed, try again",
            bramble_base::error_chain(e)
        ),
    )
}

/// Answers `request`, which came from `peer`.
pub async fn answer(
    node: &ClusterNode,
    request: JoinRequest,
    peer: IpAddr,
) -> Result<JoinGrant, Refusal> {
    let files = node.files();
    let token: JoinToken = request
        .token
        .parse()
        .map_err(|e: crate::identity::TokenError| refuse(403, e.to_string()))?;
    files
        .cluster
        .check_token(&token)
        .map_err(|e| refuse(403, e.to_string()))?;
    let name = request.board.name.clone();
    names::validate("board", &name).map_err(|e| refuse(400, e.to_string()))?;
    let now = super::join::now_ms();
    let skew = now.abs_diff(request.clock_ms);
    if Duration::from_millis(skew) > MAX_CLOCK_SKEW {
        let how = humantime::format_duration(Duration::from_secs(skew / 1000));
        let side = if request.clock_ms < now {
            "behind"
        } else {
            "ahead of"
        };
        return Err(refuse(
            400,
            format!(
                "the joining board's clock is {how} {side} {}'s (at most {}s apart are accepted): set the time on both (NTP, `timedatectl`) and join again",
                node.board(),
                MAX_CLOCK_SKEW.as_secs()
            ),
        ));
    }
    if node.leaving() {
        return Err(refuse(
            503,
            format!(
                "{} is leaving the cluster: join through another board",
                node.board()
            ),
        ));
    }
    let Some(parts) = node.parts() else {
        return Err(refuse(
            503,
            format!(
                "{} cannot reach its cluster yet (no quorum?): try again",
                node.board()
            ),
        ));
    };
    let address = if request.board.address.is_unspecified() {
        peer
    } else {
        request.board.address
    };
    let view = parts.membership.watch().borrow().clone();
    if view.boards.get(&name).is_some_and(|b| b.info.is_some()) {
        return Err(taken(&name));
    }
    if let Some((other, _)) = view
        .boards
        .iter()
        .find(|(_, b)| b.info.as_ref().is_some_and(|i| i.address == address))
    {
        return Err(refuse(
            409,
            format!(
                "address {address} is already board {other}'s: if that board is gone, `bramble cluster remove {other}` first"
            ),
        ));
    }
    let max = usize::from(node.settings().config.max_jetstream);
    let record = BoardInfo {
        address,
        jetstream: false,
        leaving: false,
        ..request.board.clone()
    };
    let bytes = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
    match parts.boards.create(&name, bytes).await {
        Ok(_) => {}
        Err(e) if e.is_conflict() => return Err(taken(&name)),
        Err(e) => return Err(no_quorum(&e)),
    }
    let placed = layout::change(&parts.cluster, |l| {
        if l.jetstream.contains(&name) || l.jetstream.len() >= max {
            return Ok::<_, std::convert::Infallible>(false);
        }
        l.jetstream.push(name.clone());
        l.removed.retain(|b| *b != name);
        Ok(true)
    })
    .await;
    let layout = match placed {
        Ok(layout) => layout,
        Err(ChangeError::Kv(e)) => {
            let _ = parts.boards.delete(&name).await;
            return Err(no_quorum(&e));
        }
        Err(ChangeError::Refused(never)) => match never {},
    };
    let jetstream = layout.jetstream.contains(&name);
    if jetstream {
        // Its record says so too (the layout is what counts; the record is for display).
        let record = BoardInfo {
            jetstream: true,
            ..record
        };
        let bytes = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        let _ = parts.boards.put(&name, bytes).await;
    }
    let mut routes = Vec::new();
    for board in &layout.jetstream {
        if *board == name {
            routes.push(std::net::SocketAddr::new(address, request.route_port));
        } else if let Some(info) = view.boards.get(board).and_then(|b| b.info.as_ref()) {
            routes.push(std::net::SocketAddr::new(info.address, info.route_port));
        }
    }
    let board = files
        .cluster
        .issue_board(&name, &[address])
        .map_err(|e| refuse(500, bramble_base::error_chain(&e)))?;
    tracing::info!(board = %name, %address, jetstream, "a board joined");
    Ok(JoinGrant {
        cluster: files.cluster.clone(),
        board,
        node: NodeFile {
            cluster: files.cluster.cluster.clone(),
            board: name,
            address,
            api_port: request.api_port,
            board_port: request.board_port,
            route_port: request.route_port,
            jetstream,
            clustered: true,
            routes,
            founder: false,
            joining: true,
        },
        api: node.settings().api.clone(),
    })
}

fn taken(name: &str) -> Refusal {
    refuse(
        409,
        format!(
            "a board named {name} is already in the cluster: give this board another name (cluster.board), or `bramble cluster remove {name}` if that board is gone"
        ),
    )
}
