//! What the cluster's API shows: a function's status from the desired state, the plan and the
//! boards' records; the boards for the dashboard.

use std::time::UNIX_EPOCH;

use bramble_gateway::types::{
    BrambleStatus, FunctionState, FunctionStatus, PlacedReplicas, PlacedState,
};
use bramble_gateway::ui::model::{Board, BoardState as UiBoardState};

use crate::desired::{FunctionKey, FunctionRecord};
use crate::membership::{BoardState, View};
use crate::placement::{Placement, Plan};

/// A function's status in the cluster: its deployment and replicas from the desired state,
/// the ready replicas every alive board reports for it (summed), where the plan puts it,
/// and why it is not running when it is not (unplaced, waiting). `local` is this board's own
/// status of it, when it runs here (its restarts and last exit are shown).
pub fn function_status(
    key: &FunctionKey,
    record: &FunctionRecord,
    plan: Option<&Plan>,
    view: &View,
    local: Option<FunctionStatus>,
) -> FunctionStatus {
    let mut status = FunctionStatus::of_deployment(&key.name, &key.namespace, &record.deployment);
    status.replicas = record.replicas;
    status.created_at = Some(
        humantime::format_rfc3339_seconds(
            UNIX_EPOCH + std::time::Duration::from_millis(record.created.at_ms),
        )
        .to_string(),
    );
    let id = key.to_string();
    status.available_replicas = view
        .boards
        .values()
        .filter(|b| b.state != BoardState::Dead)
        .filter_map(|b| b.info.as_ref()?.ready.get(&id))
        .sum();
    let local_bramble = local.and_then(|l| l.bramble).unwrap_or_default();
    let (state, message, replicas) = match plan.and_then(|p| p.find(key)) {
        None => (
            FunctionState::Starting,
            Some("not placed yet".to_owned()),
            Vec::new(),
        ),
        Some(Placement::Unplaced(reason)) => (
            FunctionState::Unplaced,
            Some(format!("cannot be placed: {reason}")),
            Vec::new(),
        ),
        Some(Placement::Waiting(waiting)) => {
            let boards: Vec<String> = waiting.keys().cloned().collect();
            (
                FunctionState::Starting,
                Some(format!(
                    "waiting for {} (the only boards it can run on)",
                    boards.join(", ")
                )),
                waiting
                    .keys()
                    .map(|board| PlacedReplicas {
                        board: board.clone(),
                        replicas: 0,
                        state: PlacedState::Waiting,
                    })
                    .collect(),
            )
        }
        Some(Placement::Placed(placed)) => {
            let mut replicas: Vec<PlacedReplicas> = placed
                .boards
                .iter()
                .map(|(board, &count)| PlacedReplicas {
                    board: board.clone(),
                    replicas: u64::from(count),
                    state: PlacedState::Placed,
                })
                .collect();
            if !placed.boards.contains_key(&placed.home) {
                replicas.push(PlacedReplicas {
                    board: placed.home.clone(),
                    replicas: 0,
                    state: PlacedState::Home,
                });
            }
            let state = if record.replicas == 0 {
                FunctionState::ScaledToZero
            } else if status.available_replicas >= record.replicas {
                FunctionState::Ready
            } else {
                local_bramble.state
            };
            let message = placed
                .short
                .as_ref()
                .map(|reason| format!("not every replica could be placed: {reason}"))
                .or(local_bramble.message.clone());
            (state, message, replicas)
        }
    };
    status.bramble = Some(BrambleStatus {
        state,
        restarts: local_bramble.restarts,
        last_exit: local_bramble.last_exit,
        message,
        replicas,
    });
    status
}

/// The boards for the dashboard, `me` marked. A board's functions are those the plan places
/// replicas on it (starting or running) and those it reports ready replicas of (a move in
/// progress), each once.
pub fn boards(view: &View, plan: Option<&Plan>, me: &str) -> Vec<Board> {
    view.boards
        .iter()
        .map(|(name, b)| {
            let placed = plan
                .into_iter()
                .flat_map(|p| &p.functions)
                .filter(|f| f.boards.get(name).is_some_and(|&n| n > 0))
                .map(|f| f.key.to_string());
            let ready = b.info.iter().flat_map(|i| i.ready.keys().cloned());
            let functions: std::collections::BTreeSet<String> = placed.chain(ready).collect();
            Board {
                name: name.clone(),
                state: match b.state {
                    BoardState::Alive => UiBoardState::Alive,
                    BoardState::Suspect => UiBoardState::Suspect,
                    BoardState::Dead => UiBoardState::Dead,
                },
                arch: b.info.as_ref().map(|i| i.arch.clone()),
                address: b.info.as_ref().map(|i| i.address.to_string()),
                memory_used: b.info.as_ref().map_or(0, |i| i.memory.used),
                memory_budget: b.info.as_ref().map_or(0, |i| i.memory.total),
                functions: functions.into_iter().collect(),
                last_seen_ms: b
                    .last_seen
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                this_board: name == me,
            }
        })
        .collect()
}
