//! The placer at work: while this board holds the placer's lease, it places every function of
//! the desired state on the boards ([`crate::placement::place`]) whenever the functions or the
//! boards change, and writes the plan to the `cluster` bucket (key [`PLAN_KEY`], with
//! compare-and-set on the revision it read, so a placer that lost its lease meanwhile cannot
//! overwrite its successor's plan). Every board follows the plan ([`follow`]).
//!
//! The placer waits until the board records are loaded and the desired state's mirror is
//! current: a plan made from half a view would move functions for nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::Parts;
use crate::desired::Desired;
use crate::kv::{Bucket, Change, KvError};
use crate::membership::View;
use crate::placement::{Board, Function, PlacementInput, Plan, Reading, place};

/// The key of the plan in the `cluster` bucket.
pub const PLAN_KEY: &str = "plan";

/// How long the placer lets changes settle before placing (a deploy of a stack writes several
/// functions in a row).
const SETTLE: Duration = Duration::from_millis(50);

/// Places again at least this often while it holds the lease.
const AGAIN: Duration = Duration::from_secs(5);

/// The first wait before placing again after a failed write (doubling up to [`AGAIN`]).
const RETRY_FIRST: Duration = Duration::from_millis(200);

/// The input of one placing: every board of the view with a record, every function of the
/// desired state (a stored function whose deployment no longer parses is left out, with a
/// warning: the API refuses such deployments before storing them), read as `reading` says.
pub fn input(view: &View, desired: &Desired, previous: Plan, reading: Reading) -> PlacementInput {
    let functions = desired
        .functions
        .iter()
        .filter_map(|(key, record)| {
            let replicas = u32::try_from(record.value.replicas).unwrap_or(u32::MAX);
            match Function::from_deployment(
                key.clone(),
                replicas,
                &record.value.deployment,
                reading,
                None,
            ) {
                Ok(function) => Some(function),
                Err(e) => {
                    tracing::warn!(function = %key, error = %e, "not placed: its stored deployment does not parse");
                    None
                }
            }
        })
        .collect();
    PlacementInput {
        boards: Board::all_from_view(view),
        functions,
        previous,
    }
}

/// The plan and its revision, as the stream leader has it (`None`: no plan yet).
pub async fn read(bucket: &Bucket) -> Result<Option<(Plan, u64)>, KvError> {
    let Some(entry) = bucket.entry_from_leader(PLAN_KEY).await? else {
        return Ok(None);
    };
    match serde_json::from_slice(&entry.value) {
        Ok(plan) => Ok(Some((plan, entry.revision))),
        Err(e) => {
            // Replaced by the next placing.
            tracing::warn!(error = %e, "the stored plan does not parse; placing afresh");
            Ok(Some((Plan::default(), entry.revision)))
        }
    }
}

/// The stored plan as the placer knows it: what it read or wrote last, and its revision
/// (`None`: no plan stored yet).
type Known = (Plan, Option<u64>);

/// Places while this board holds the lease; returns never (aborted with the node). The view
/// changes with every heartbeat: placing again is cheap (microseconds for a shelf), and the
/// plan is written only when it changes, so an idle cluster writes nothing.
pub async fn run(parts: Arc<Parts>, reading: Reading) {
    let mut lease = parts.lease.watch();
    let mut desired = parts.desired.mirror().subscribe();
    let mut view = parts.membership.watch();
    let mut known: Option<Known> = None;
    // After a failed write (the `cluster` stream electing a new leader after its board died):
    // how soon to try again — soon, then less often.
    let mut retry = RETRY_FIRST;
    loop {
        // Every input marked seen, so that `changed` below waits for the next change.
        let holder = lease.borrow_and_update().is_holder();
        let loaded = view.borrow_and_update().records_loaded;
        let current = desired.borrow_and_update().is_current();
        if !holder {
            // A placer that gets the lease (again) reads what its predecessor wrote.
            known = None;
        } else if loaded && current {
            match place_once(&parts, &desired, &view, reading, &mut known).await {
                Ok(()) => retry = RETRY_FIRST,
                Err(e) => {
                    tracing::debug!(error = %bramble_base::error_chain(&e), in_ms = retry.as_millis(), "placing; trying again");
                    known = None;
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(AGAIN);
                    continue;
                }
            }
        }
        tokio::select! {
            _ = lease.changed() => {}
            _ = desired.changed() => {}
            _ = view.changed() => {}
            () = tokio::time::sleep(AGAIN) => {}
        }
        tokio::time::sleep(SETTLE).await;
    }
}

async fn place_once(
    parts: &Parts,
    desired: &watch::Receiver<Arc<Desired>>,
    view: &watch::Receiver<Arc<View>>,
    reading: Reading,
    known: &mut Option<Known>,
) -> Result<(), KvError> {
    let (previous, revision) = match known.take() {
        Some(known) => known,
        None => read(&parts.cluster)
            .await?
            .map_or((Plan::default(), None), |(plan, revision)| {
                (plan, Some(revision))
            }),
    };
    let input = input(
        &view.borrow().clone(),
        &desired.borrow().clone(),
        previous.clone(),
        reading,
    );
    let plan = place(&input);
    if plan == previous && revision.is_some() {
        *known = Some((previous, revision));
        return Ok(());
    }
    let value = Bytes::from(serde_json::to_vec(&plan).unwrap_or_default());
    let written = match revision {
        Some(revision) => parts.cluster.update(PLAN_KEY, value, revision).await,
        None => parts.cluster.create(PLAN_KEY, value).await,
    };
    match written {
        Ok(revision) => {
            tracing::info!(
                placed = plan.functions.len(),
                unplaced = plan.unplaced.len(),
                waiting = plan.waiting.len(),
                "new plan"
            );
            *known = Some((plan, Some(revision)));
            Ok(())
        }
        // Another placer wrote meanwhile (a lease hand-over): its plan stands; the next round
        // reads it (`known` stays empty).
        Err(e) if e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Follows the plan: the receiver shows the latest one; `None` until one was read (a board must
/// not take "no plan read yet" for "nothing to run").
pub fn follow(cluster: Bucket) -> watch::Receiver<Option<Arc<Plan>>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut changes = crate::kv::follow(cluster);
        while let Some(change) = changes.recv().await {
            if let Change::Put { key, value, .. } = change
                && key == PLAN_KEY
            {
                match serde_json::from_slice::<Plan>(&value) {
                    Ok(plan) => {
                        tx.send_if_modified(|current| {
                            let changed = current.as_deref() != Some(&plan);
                            if changed {
                                *current = Some(Arc::new(plan));
                            }
                            changed
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a plan that does not parse; kept the last one");
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}
