//! Leaving a cluster (`bramble cluster leave`) and forgetting a dead board
//! (`bramble cluster remove NAME`).
//!
//! A board leaves in this order: it says it is leaving (nothing new is placed on it, and it
//! takes no more calls from the queue), waits until its functions run elsewhere, the calls it
//! was running have finished and the async calls it accepted have run (it keeps their records
//! until then, and alone it would run what is left itself), takes itself out of the JetStream
//! layout (promoting a board without JetStream in its place when there is one), deletes its
//! record, stops its heartbeats and its nats-server (having handed over what its server leads:
//! streams, the meta group), removes its cluster state and restarts in single-board mode.
//! The board holding the placer's lease then removes its JetStream peer from the meta group.
//!
//! A cluster cannot shrink to a single JetStream board yet: with two JetStream boards and no
//! board to promote, the last but one cannot leave (a lone clustered server has no quorum; it
//! would have to move back to standalone JetStream, which is not done).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::layout::{self, ChangeError};
use super::{ClusterNode, Parts, Refusal};
use crate::desired::FunctionKey;
use crate::membership::{BoardState, View};
use crate::placement::{Placement, Plan};

/// What a leave did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Left {
    /// The cluster left.
    pub cluster: String,
    /// The board promoted to carry JetStream in its place, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<String>,
    /// Whether the cluster was told (false: it was unreachable and `force` was given, or it had
    /// removed this board already).
    pub told: bool,
}

fn kv_refusal(e: &crate::kv::KvError) -> Refusal {
    Refusal::new(
        503,
        format!(
            "the cluster cannot store the change now ({}); nothing was changed: try again once it has a quorum",
            bramble_base::error_chain(e)
        ),
    )
}

/// How long a leaving board waits for its functions to run elsewhere.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

/// Leaves the cluster. `force`: leave even when the cluster cannot be told (it is gone). The
/// node restarts once this returns.
pub async fn leave(node: &Arc<ClusterNode>, force: bool) -> Result<Left, Refusal> {
    let cluster = node.cluster();
    // Leaving without telling the cluster (it removed this board already, or it is gone).
    let untold = Left {
        cluster: cluster.clone(),
        promoted: None,
        told: false,
    };
    if node.was_removed() {
        return finish(node, untold).await;
    }
    let Some(parts) = node.ready(Duration::from_secs(5)).await else {
        if force {
            return finish(node, untold).await;
        }
        return Err(Refusal::new(
            503,
            "this board cannot reach its cluster (no quorum?): nothing was changed; if the cluster is gone for good, leave with --force",
        ));
    };
    let me = node.board();
    let view = parts.membership.watch().borrow().clone();
    let (current, _) = layout::read(&parts.cluster)
        .await
        .map_err(|e| kv_refusal(&e))?
        .unwrap_or_default();
    let others = view.boards.keys().any(|b| *b != me);
    let promoted = layout::promotable(&current, &view, &me);
    if current.jetstream.contains(&me) && current.jetstream.len() == 2 && promoted.is_none() {
        let other = current
            .jetstream
            .iter()
            .find(|b| **b != me)
            .cloned()
            .unwrap_or_default();
        return Err(Refusal::new(
            409,
            format!(
                "{me} and {other} are the only boards that carry JetStream, and no board can take {me}'s place: a cluster cannot shrink to one JetStream board; add a board first"
            ),
        ));
    }
    // What runs here now: it must run elsewhere before this board goes.
    let here: Vec<FunctionKey> = parts
        .plan
        .borrow()
        .as_deref()
        .map(|plan| plan.for_board(&me).into_iter().map(|w| w.key).collect())
        .unwrap_or_default();
    // Nothing new is placed here from now on; the layout is no longer followed.
    node.set_leaving(true);
    let record = node.me().borrow().clone();
    let marked = parts.membership.update(&record).await;
    if let Err(e) = marked {
        node.set_leaving(false);
        return Err(Refusal::new(
            503,
            format!(
                "cannot tell the cluster this board is leaving: {}",
                bramble_base::error_chain(&e)
            ),
        ));
    }
    let started = std::time::Instant::now();
    let drained = match drained(&parts, &me, &here, DRAIN_TIMEOUT).await {
        // The calls it accepted: their records here would run them again once it is alone.
        Ok(()) => calls_run(node, DRAIN_TIMEOUT.saturating_sub(started.elapsed())).await,
        Err(refusal) => Err(refusal),
    };
    if let Err(refusal) = drained {
        node.set_leaving(false);
        let record = node.me().borrow().clone();
        let _ = parts.membership.update(&record).await;
        return Err(refusal);
    }
    // Before the layout changes (the placer then takes this board's replicas out of the
    // streams): nothing else moves meanwhile.
    if others && current.jetstream.contains(&me) {
        hand_over_leadership(node, &me).await;
    }
    let mut promoted_now = None;
    if others {
        let changed = layout::change(&parts.cluster, |l| {
            let carried = l.jetstream.contains(&me);
            l.jetstream.retain(|b| *b != me);
            promoted_now = None;
            if carried {
                if !l.jetstream.is_empty() && !l.removed.contains(&me) {
                    l.removed.push(me.clone());
                }
                if let Some(p) = layout::promotable(l, &view, &me) {
                    l.jetstream.push(p.clone());
                    promoted_now = Some(p);
                }
            }
            Ok::<_, std::convert::Infallible>(carried)
        })
        .await;
        match changed {
            Ok(_) => {}
            Err(ChangeError::Kv(e)) => {
                node.set_leaving(false);
                return Err(kv_refusal(&e));
            }
            Err(ChangeError::Refused(never)) => match never {},
        }
        if let Some(p) = &promoted_now {
            // The promoted board restarts its server with JetStream; wait until it carries it,
            // so the JetStream peers never drop below a majority.
            wait_carrying(node, p).await;
        }
    }
    if let Err(e) = parts.membership.forget(&me).await {
        tracing::warn!(error = %bramble_base::error_chain(&e), "could not delete this board's record");
    }
    finish(
        node,
        Left {
            cluster,
            promoted: promoted_now,
            told: true,
        },
    )
    .await
}

/// Waits until every function of `here` runs elsewhere ([`still_here`] is empty), at most
/// `timeout`; refuses with those that do not after that.
async fn drained(
    parts: &Parts,
    me: &str,
    here: &[FunctionKey],
    timeout: Duration,
) -> Result<(), Refusal> {
    let mut plan = parts.plan.clone();
    let mut view = parts.membership.watch();
    let started = std::time::Instant::now();
    let mut reported = std::time::Instant::now();
    loop {
        let left = {
            let plan = plan.borrow_and_update().clone();
            let view = view.borrow_and_update().clone();
            plan.map_or_else(
                || here.iter().map(ToString::to_string).collect(),
                |plan| still_here(&plan, &view, me, here),
            )
        };
        if left.is_empty() {
            tracing::info!(waited = ?started.elapsed(), "this board's functions run elsewhere");
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(Refusal::new(
                503,
                format!(
                    "{} still run only on this board after {}s (no other board has started them): this board stays in the cluster; try again, or make room on other boards",
                    left.join(", "),
                    timeout.as_secs()
                ),
            ));
        }
        if reported.elapsed() >= Duration::from_secs(5) {
            tracing::info!(waiting_for = %left.join(", "), "leaving: waiting until these run elsewhere");
            reported = std::time::Instant::now();
        }
        let wake = tokio::time::sleep(Duration::from_secs(1));
        tokio::select! {
            Ok(()) = plan.changed() => {}
            Ok(()) = view.changed() => {}
            () = wake => {}
        }
    }
}

/// Waits (at most `bound`) until every async call this board accepted has run: the cluster
/// runs them, and this board keeps each record until then (single again, it would run what is
/// left itself, for functions it no longer has). The calls this board itself is running from
/// the queue finish first (it takes no new one while leaving); one still running at the bound
/// is left to the queue, which gives it to another board once this one stops answering for it.
async fn calls_run(node: &ClusterNode, bound: Duration) -> Result<(), Refusal> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut running = node.running_calls.subscribe();
    let finished = tokio::time::timeout_at(deadline, running.wait_for(|n| *n == 0))
        .await
        .is_ok();
    if !finished {
        let n = *running.borrow();
        tracing::warn!(
            running = n,
            "calls from the queue still run here; leaving anyway: another board runs them again"
        );
    }
    loop {
        let kept = match node.kept_calls().await {
            None | Some(Ok(0)) => return Ok(()),
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot count the async calls this board keeps; leaving anyway");
                return Ok(());
            }
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Refusal::new(
                409,
                format!(
                    "{kept} async calls this board accepted have not run yet (the cluster runs them; this board keeps their records until then); the board stays in the cluster: leave again once they ran"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The functions of `here` that do not run elsewhere yet: still placed on `me` (or `me` is
/// their home), or placed elsewhere with no replica ready there yet. One that no other board
/// can run (waiting, unplaced) or that was deleted does not hold a leave up.
fn still_here(plan: &Plan, view: &View, me: &str, here: &[FunctionKey]) -> Vec<String> {
    here.iter()
        .filter(|key| match plan.find(key) {
            Some(Placement::Placed(f)) => {
                let on_me = f.boards.get(me).is_some_and(|n| *n > 0) || f.home == me;
                let id = key.to_string();
                let ready_elsewhere: u64 = view
                    .boards
                    .iter()
                    .filter(|(name, b)| *name != me && b.state != BoardState::Dead)
                    .filter_map(|(_, b)| b.info.as_ref()?.ready.get(&id))
                    .sum();
                on_me || (f.placed() > 0 && ready_elsewhere == 0)
            }
            Some(Placement::Unplaced(_) | Placement::Waiting(_)) | None => false,
        })
        .map(ToString::to_string)
        .collect()
}

/// Has this board's nats-server give up what it leads before it stops, so the boards that stay
/// never meet a leaderless stream.
async fn hand_over_leadership(node: &ClusterNode, me: &str) {
    let system = match node.system_client().await {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %bramble_base::error_chain(&e), "cannot hand over leadership (system account); the others elect new leaders once this board's server stops");
            return;
        }
    };
    let started = std::time::Instant::now();
    let done =
        crate::layout::hand_over_leadership(node.jetstream(), &system, me, HAND_OVER_TIMEOUT).await;
    tracing::info!(
        meta = done.meta,
        streams = done.streams.len(),
        leaderless = ?done.leaderless,
        took = ?started.elapsed(),
        "leadership handed over"
    );
}

/// How long a leaving board waits for others to lead what it led.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits (at most a minute) until `board`'s record says it carries JetStream.
async fn wait_carrying(node: &ClusterNode, board: &str) {
    let Some(parts) = node.parts() else { return };
    let mut view = parts.membership.watch();
    let carrying = |v: &Arc<crate::membership::View>| {
        v.boards
            .get(board)
            .and_then(|b| b.info.as_ref())
            .is_some_and(|i| i.jetstream)
    };
    let waited = tokio::time::timeout(Duration::from_secs(60), view.wait_for(carrying)).await;
    if waited.is_err() {
        tracing::warn!(%board, "the promoted board does not carry JetStream yet; leaving anyway");
    }
}

async fn finish(node: &Arc<ClusterNode>, left: Left) -> Result<Left, Refusal> {
    node.leaving
        .store(true, std::sync::atomic::Ordering::SeqCst);
    node.stop().await;
    let state_dir = node.settings().state_dir.clone();
    let cluster = left.cluster.clone();
    tokio::task::spawn_blocking(move || {
        super::files::ClusterFiles::remove(&state_dir)?;
        bramble_base::write_atomic(
            &super::files::left_path(&state_dir),
            cluster.as_bytes(),
            0o600,
        )
    })
    .await
    .map_err(|e| Refusal::new(500, e.to_string()))?
    .map_err(|e| Refusal::new(500, format!("removing this board's cluster state: {e}")))?;
    tracing::info!(cluster = %left.cluster, "left the cluster; restarting in single-board mode");
    node.request_restart();
    Ok(left)
}

/// Forgets board `name`, which must be dead.
pub async fn remove(node: &ClusterNode, name: &str) -> Result<Option<String>, Refusal> {
    let me = node.board();
    if name == me {
        return Err(Refusal::new(
            400,
            format!("{name} is this board: use `bramble cluster leave`"),
        ));
    }
    let Some(parts) = node.ready(Duration::from_secs(5)).await else {
        return Err(Refusal::new(
            503,
            "this board cannot reach its cluster (no quorum?): nothing was changed",
        ));
    };
    let view = parts.membership.watch().borrow().clone();
    let Some(board) = view.boards.get(name) else {
        return Err(Refusal::new(
            404,
            format!("there is no board named {name} in the cluster"),
        ));
    };
    if board.state != BoardState::Dead {
        let seen = board
            .last_seen
            .map(|t| format!(", last heard {}", humantime::format_rfc3339_seconds(t)))
            .unwrap_or_default();
        return Err(Refusal::new(
            409,
            format!(
                "board {name} is {}{seen}: only a dead board can be removed; a board that answers leaves with `bramble cluster leave` on it",
                match board.state {
                    BoardState::Alive => "alive",
                    _ => "not dead yet (suspect)",
                }
            ),
        ));
    }
    let mut promoted = None;
    let changed = layout::change(&parts.cluster, |l| {
        let carried = l.jetstream.contains(&name.to_owned());
        l.jetstream.retain(|b| b != name);
        promoted = None;
        if carried {
            if !l.removed.iter().any(|b| b == name) {
                l.removed.push(name.to_owned());
            }
            if let Some(p) = layout::promotable(l, &view, name) {
                l.jetstream.push(p.clone());
                promoted = Some(p);
            }
        }
        Ok::<_, std::convert::Infallible>(carried)
    })
    .await;
    match changed {
        Ok(_) => {}
        Err(ChangeError::Kv(e)) => return Err(kv_refusal(&e)),
        Err(ChangeError::Refused(never)) => match never {},
    }
    parts.membership.forget(name).await.map_err(|e| {
        Refusal::new(
            503,
            format!(
                "the cluster cannot delete the board's record now: {}",
                bramble_base::error_chain(&e)
            ),
        )
    })?;
    tracing::info!(board = %name, ?promoted, "board removed from the cluster");
    Ok(promoted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{board, key, placed, view};

    fn plan(functions: Vec<crate::placement::FunctionPlan>) -> Plan {
        Plan {
            functions,
            ..Plan::default()
        }
    }

    #[test]
    fn a_function_holds_a_leave_until_it_is_ready_on_another_board() {
        let here = [key("f"), key("g")];
        let v = view(vec![
            board("b0", BoardState::Alive, &[("f.openfaas-fn", 1)]),
            board("b1", BoardState::Alive, &[]),
        ]);
        // Still placed on the leaving board.
        let p = plan(vec![
            placed("f", &[("b0", 1)], "b0"),
            placed("g", &[("b1", 1)], "b1"),
        ]);
        assert_eq!(
            still_here(&p, &v, "b0", &here),
            ["f.openfaas-fn", "g.openfaas-fn"]
        );
        // Moved, but not ready there yet; then ready there.
        let p = plan(vec![
            placed("f", &[("b1", 1)], "b1"),
            placed("g", &[("b1", 1)], "b1"),
        ]);
        assert_eq!(still_here(&p, &v, "b0", &here).len(), 2);
        let v = view(vec![
            board("b0", BoardState::Alive, &[("f.openfaas-fn", 1)]),
            board(
                "b1",
                BoardState::Alive,
                &[("f.openfaas-fn", 1), ("g.openfaas-fn", 1)],
            ),
        ]);
        assert!(still_here(&p, &v, "b0", &here).is_empty());
        // A dead board's ready replicas do not count.
        let v = view(vec![board("b1", BoardState::Dead, &[("f.openfaas-fn", 1)])]);
        assert_eq!(still_here(&p, &v, "b0", &[key("f")]), ["f.openfaas-fn"]);
    }

    #[test]
    fn scaled_to_zero_waiting_or_deleted_functions_do_not_hold_a_leave() {
        let v = view(vec![board("b1", BoardState::Alive, &[])]);
        // Scaled to zero with its home moved: nothing to wait for.
        let p = plan(vec![placed("f", &[], "b1")]);
        assert!(still_here(&p, &v, "b0", &[key("f")]).is_empty());
        // Its home still the leaving board: it holds.
        let p = plan(vec![placed("f", &[], "b0")]);
        assert_eq!(still_here(&p, &v, "b0", &[key("f")]).len(), 1);
        // Deleted meanwhile.
        assert!(still_here(&Plan::default(), &v, "b0", &[key("f")]).is_empty());
    }
}
