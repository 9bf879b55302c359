//! What `bramble cluster status` shows (`GET /system/cluster`): every board as this board sees
//! it — alive, suspect or dead, when it was last heard, what it is and has.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ClusterNode;
use crate::membership::{BoardInfo, BoardState, BoardView};

/// The cluster as one board sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The cluster's name.
    pub cluster: String,
    /// The board that answered.
    pub board: String,
    /// Whether that board reaches the cluster's shared state now.
    pub connected: bool,
    /// The board placing functions (the placer's lease holder), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placer: Option<String>,
    /// Async calls accepted and not yet run, cluster-wide (`None` when the queue does not
    /// answer now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_calls: Option<u64>,
    /// How the cluster's state is replicated now (`None` when JetStream does not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
    /// Every board.
    pub boards: Vec<BoardStatus>,
}

/// How many copies the cluster keeps of its state (functions, the call queue, …), and which
/// streams do not have them all yet (just after a board joined or died).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Replication {
    /// Copies every stream should have: the JetStream boards, at most 3.
    pub copies: usize,
    /// Streams short of copies, or with copies not caught up (`CALLS: 2 of 3 current`).
    pub behind: Vec<String>,
}

/// How long the status waits for JetStream's answers.
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long it waits for one stream's (less than the whole: the others still count).
const STREAM_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

async fn replication(node: &ClusterNode) -> Option<Replication> {
    use futures::TryStreamExt as _;
    let copies = node.replicas_now();
    let js = node.jetstream();
    let names: Vec<String> = match js.stream_names().try_collect().await {
        Ok(names) => names,
        Err(e) => {
            tracing::debug!(error = %bramble_base::error_chain(&e), "status: listing the streams");
            return None;
        }
    };
    // Asked all at once: one round trip, not one per stream.
    let placements = futures::future::join_all(names.iter().map(|name| async move {
        tokio::time::timeout(STREAM_WAIT, crate::layout::stream_placement(js, name)).await
    }))
    .await;
    let mut behind = Vec::new();
    for (name, placement) in names.iter().zip(placements) {
        let placement = match placement {
            Ok(Ok(placement)) => placement,
            // Listed as behind, with why: one stream without a leader does not hide the others.
            Ok(Err(e)) => {
                behind.push(format!("{name}: {}", bramble_base::error_chain(&e)));
                continue;
            }
            Err(_) => {
                behind.push(format!("{name}: no answer (no leader?)"));
                continue;
            }
        };
        // A standalone server's streams have no peers: their one copy is current.
        let current = if placement.peers.is_empty() {
            placement.replicas
        } else {
            placement
                .peers
                .iter()
                .filter(|(_, current)| *current)
                .count()
        };
        if placement.replicas < copies || current < copies {
            behind.push(format!("{name}: {current} of {copies} current"));
        }
    }
    Some(Replication { copies, behind })
}

/// One board.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BoardStatus {
    /// Its name.
    pub name: String,
    /// Its API address (`10.0.0.2:8080`).
    pub address: String,
    /// Alive, suspect or dead.
    pub state: BoardState,
    /// When it was last heard (RFC 3339), if since the answering board started.
    pub last_seen: Option<String>,
    /// `arm64`, `arm`, `amd64`.
    pub arch: String,
    /// The platform its runtime runs images for.
    pub platform: String,
    /// bramble's version on it.
    pub version: String,
    /// Memory of functions, bytes.
    pub memory: MemoryStatus,
    /// Function replicas running on it.
    pub functions: u32,
    /// Hardware it lends to functions.
    pub hardware: HardwareStatus,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Whether it carries JetStream.
    pub jetstream: bool,
    /// Whether it is leaving the cluster.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// Memory reserved by functions against the board's budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStatus {
    /// Reserved, bytes.
    pub used: u64,
    /// The budget, bytes (`None`: the board sets none).
    pub budget: Option<u64>,
}

/// The hardware a board has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareStatus {
    /// The GPIO chip's label.
    pub gpio_chip: Option<String>,
    /// I2C bus numbers.
    pub i2c_buses: Vec<u32>,
    /// 1-Wire sensor ids.
    pub sensors: Vec<String>,
}

fn board_status(name: &str, view: &BoardView) -> BoardStatus {
    let empty = BoardInfo {
        name: name.to_owned(),
        address: std::net::IpAddr::from([0, 0, 0, 0]),
        arch: String::new(),
        version: String::new(),
        nats_version: String::new(),
        memory: crate::membership::MemoryBudget::default(),
        functions: 0,
        hardware: crate::membership::HardwareSummary::default(),
        labels: BTreeMap::new(),
        started_at_ms: 0,
        jetstream: false,
        platform: String::new(),
        api_port: 0,
        board_port: 0,
        route_port: 0,
        leaving: false,
        ready: Default::default(),
        outside: Default::default(),
    };
    let info = view.info.as_ref().unwrap_or(&empty);
    let address = match info.address {
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", info.api_port),
        std::net::IpAddr::V4(v4) => format!("{v4}:{}", info.api_port),
    };
    BoardStatus {
        name: name.to_owned(),
        address,
        state: view.state,
        last_seen: view
            .last_seen
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        arch: info.arch.clone(),
        platform: info.platform.clone(),
        version: info.version.clone(),
        memory: MemoryStatus {
            used: info.memory.used,
            budget: (info.memory.total != u64::MAX).then_some(info.memory.total),
        },
        functions: info.functions,
        hardware: HardwareStatus {
            gpio_chip: info.hardware.gpio_chip.clone(),
            i2c_buses: info.hardware.i2c_buses.clone(),
            sensors: info.hardware.one_wire.clone(),
        },
        labels: info.labels.clone(),
        jetstream: info.jetstream,
        leaving: info.leaving,
    }
}

/// The status as this board sees it now.
pub async fn status(node: &ClusterNode) -> ClusterStatus {
    let parts = node.parts();
    let view = node.view();
    let placer = parts
        .as_ref()
        .and_then(|p| match &*p.lease.watch().borrow() {
            crate::lease::LeaseStatus::Holding { .. } => Some(node.board()),
            crate::lease::LeaseStatus::Following { holder } => holder.clone(),
            crate::lease::LeaseStatus::Unknown => None,
        });
    let (queued_calls, replication) = match &parts {
        Some(p) => tokio::join!(
            async {
                match tokio::time::timeout(STATUS_WAIT, p.calls.pending()).await {
                    Ok(Ok(n)) => Some(n),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %bramble_base::error_chain(&e), "status: the call queue");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(waited = ?STATUS_WAIT, "status: the call queue did not answer");
                        None
                    }
                }
            },
            async {
                let answer = tokio::time::timeout(STATUS_WAIT, replication(node)).await;
                if answer.is_err() {
                    tracing::debug!(waited = ?STATUS_WAIT, "status: JetStream did not answer for the replication");
                }
                answer.ok().flatten()
            }
        ),
        None => (None, None),
    };
    ClusterStatus {
        cluster: node.cluster(),
        board: node.board(),
        connected: parts.is_some(),
        placer,
        queued_calls,
        replication,
        boards: view
            .boards
            .iter()
            .map(|(name, board)| board_status(name, board))
            .collect(),
    }
}
