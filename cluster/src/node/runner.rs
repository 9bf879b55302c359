//! The board's part of the plan, run: whenever the plan or the desired state changes, the board
//! works out its [`Target`] (the functions the plan gives it, with their deployments from the
//! desired state, the namespaces, the secrets those functions use, opened with the cluster's
//! key) and [`reconcile`]s its own provider to it. A pass that could not do everything is
//! repeated every few seconds.
//!
//! Nothing runs before the first plan is read and the desired state's mirror is current: "no
//! plan read yet" must never read as "run nothing" (that would delete the board's functions at
//! every restart).
//!
//! A board that dies leaves its replicas in the stored plan until the placer stores a new one,
//! and that write can wait seconds for the KV (a stream electing a new leader, when the dead
//! board led it). Meanwhile each board runs the plan the placer will store, worked out from
//! the same inputs ([`effective`]: placement is deterministic), so the dead board's replicas
//! start elsewhere once the board is seen dead, not once the write is through.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bramble_gateway::provider::Provider;
use bramble_gateway::types::FunctionNamespace;
use tokio::sync::watch;

use super::Parts;
use crate::desired::{Desired, DesiredStore, SecretKey};
use crate::membership::{BoardState, View};
use crate::placement::{Plan, Reading, place};
use crate::reconcile::{Assigned, Memory, SecretValue, Target, reconcile};

/// How soon a pass that left something undone is repeated.
const RETRY: Duration = Duration::from_secs(5);

/// What `board` must run: its functions in `plan` (deployments from `desired`; one deleted
/// since the plan was made is left out), every namespace of the desired state, and the
/// secrets its functions use, taken from `secrets` (`None` values: not opened yet, see
/// [`secrets_needed`]).
pub fn target(
    board: &str,
    plan: &Plan,
    desired: &Desired,
    secrets: &HashMap<SecretKey, SecretValue>,
) -> Target {
    let mut target = Target {
        known_secrets: desired.secrets.keys().cloned().collect(),
        ..Target::default()
    };
    for (name, record) in &desired.namespaces {
        target.namespaces.insert(
            name.clone(),
            FunctionNamespace {
                name: name.clone(),
                labels: record.value.labels.clone(),
                annotations: record.value.annotations.clone(),
            },
        );
    }
    for work in plan.for_board(board) {
        let Some(record) = desired.functions.get(&work.key) else {
            continue;
        };
        let mut deployment = record.value.deployment.clone();
        deployment.namespace = Some(work.key.namespace.clone());
        for secret in &deployment.secrets {
            let key = SecretKey {
                namespace: work.key.namespace.clone(),
                name: secret.clone(),
            };
            if let Some(value) = secrets.get(&key) {
                target.secrets.insert(key, value.clone());
            }
        }
        target.functions.insert(
            work.key.clone(),
            Assigned {
                deployment,
                replicas: u64::from(work.replicas),
            },
        );
    }
    target
}

/// The secrets `board`'s functions use whose value at the stored revision is not in `cache`.
pub fn secrets_needed(
    board: &str,
    plan: &Plan,
    desired: &Desired,
    cache: &HashMap<SecretKey, SecretValue>,
) -> Vec<(SecretKey, u64)> {
    let mut needed = Vec::new();
    for work in plan.for_board(board) {
        let Some(record) = desired.functions.get(&work.key) else {
            continue;
        };
        for secret in &record.value.deployment.secrets {
            let key = SecretKey {
                namespace: work.key.namespace.clone(),
                name: secret.clone(),
            };
            let Some(&revision) = desired.secrets.get(&key) else {
                continue;
            };
            if cache.get(&key).map(|v| v.revision) != Some(revision) {
                needed.push((key, revision));
            }
        }
    }
    needed.sort_by(|a, b| a.0.cmp(&b.0));
    needed.dedup_by(|a, b| a.0 == b.0);
    needed
}

/// Opens what [`secrets_needed`] lists into `cache`; one that cannot be opened now is tried
/// again on the next pass (its function waits for it: the local provider refuses a deployment
/// whose secret is missing).
async fn open_secrets(
    store: &DesiredStore,
    needed: Vec<(SecretKey, u64)>,
    cache: &mut HashMap<SecretKey, SecretValue>,
) -> bool {
    let mut all = true;
    for (key, revision) in needed {
        match store.open_secret(&key.namespace, &key.name).await {
            Ok(value) => {
                cache.insert(key, SecretValue { revision, value });
            }
            Err(e) => {
                tracing::warn!(secret = %key.name, namespace = %key.namespace, error = %bramble_base::error_chain(&e), "cannot open a secret a function of this board uses; retrying");
                all = false;
            }
        }
    }
    all
}

/// The plan to run: `stored`, unless it still gives replicas to a board `view` shows dead —
/// then the plan the placer will store in its place, worked out from the same inputs.
pub fn effective(stored: Arc<Plan>, view: &View, desired: &Desired, reading: Reading) -> Arc<Plan> {
    let dead = |board: &str| {
        view.boards
            .get(board)
            .is_some_and(|b| b.state == BoardState::Dead)
    };
    let stale = stored
        .functions
        .iter()
        .any(|f| f.boards.keys().any(|b| dead(b)));
    if !stale {
        return stored;
    }
    let input = super::placer::input(view, desired, (*stored).clone(), reading);
    Arc::new(place(&input))
}

fn dead_boards(view: &View) -> Vec<String> {
    view.in_state(BoardState::Dead).map(str::to_owned).collect()
}

/// Resolves once the boards `view` shows dead are no longer `dead`.
async fn dead_changed(
    view: &mut watch::Receiver<Arc<View>>,
    dead: &[String],
) -> Result<(), watch::error::RecvError> {
    loop {
        view.changed().await?;
        if dead_boards(&view.borrow()) != dead {
            return Ok(());
        }
    }
}

/// Runs `board`'s part of the plan on `local` for as long as the node runs.
pub async fn run<L: Provider>(
    board: String,
    parts: Arc<Parts>,
    mut plan: watch::Receiver<Option<Arc<Plan>>>,
    reading: Reading,
    local: Arc<L>,
) {
    let mut desired = parts.desired.mirror().subscribe();
    let mut view = parts.membership.watch();
    let mut memory = Memory::default();
    let mut cache: HashMap<SecretKey, SecretValue> = HashMap::new();
    let mut ahead = false;
    loop {
        let stored = plan.borrow_and_update().clone();
        let snapshot = desired.borrow_and_update().clone();
        let seen = view.borrow_and_update().clone();
        let dead = dead_boards(&seen);
        let mut settled = true;
        if let Some(stored) = stored.filter(|_| snapshot.is_current()) {
            let current_plan = effective(Arc::clone(&stored), &seen, &snapshot, reading);
            let now_ahead = !Arc::ptr_eq(&current_plan, &stored);
            if now_ahead && !ahead {
                tracing::info!(
                    "a board is dead and the placer's new plan is not stored yet: running the plan it will store"
                );
            }
            ahead = now_ahead;
            let needed = secrets_needed(&board, &current_plan, &snapshot, &cache);
            settled &= open_secrets(&parts.desired, needed, &mut cache).await;
            let target = target(&board, &current_plan, &snapshot, &cache);
            cache.retain(|key, _| target.secrets.contains_key(key));
            let report = reconcile(&*local, &target, &mut memory).await;
            for action in &report.actions {
                tracing::info!(%action, "running this board's part of the cluster");
            }
            for (subject, error) in &report.failed {
                tracing::warn!(%subject, error = %error, "cannot run this board's part yet; retrying");
            }
            settled &= report.converged();
        }
        let retry = async {
            if settled {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(RETRY).await;
        };
        tokio::select! {
            changed = plan.changed() => if changed.is_err() { return },
            changed = desired.changed() => if changed.is_err() { return },
            // Only a board's death (or return) can change the effective plan, not the
            // heartbeats that change the view every second.
            changed = dead_changed(&mut view, &dead) => if changed.is_err() { return },
            () = retry => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use std::sync::Arc;

    use super::{effective, secrets_needed, target};
    use crate::desired::{Desired, SecretKey, Versioned};
    use crate::fixtures::{board, key, placed, record, view};
    use crate::membership::BoardState;
    use crate::placement::{Plan, Reading};
    use crate::reconcile::SecretValue;

    /// While the stored plan still gives a dead board replicas, the boards run the plan the
    /// placer will store: the dead board's replicas on the others; otherwise the stored one.
    #[test]
    fn a_dead_boards_replicas_go_elsewhere_before_the_new_plan_is_stored() {
        let mut desired = Desired::default();
        for (name, replicas) in [("f", 1), ("g", 2)] {
            desired.functions.insert(
                key(name),
                Versioned {
                    value: record(replicas, &[]),
                    revision: 1,
                },
            );
        }
        let stored = Arc::new(Plan {
            functions: vec![
                placed("f", &[("b1", 1)], "b1"),
                placed("g", &[("b0", 1), ("b2", 1)], "b0"),
            ],
            ..Plan::default()
        });
        let reading = Reading::grants_only(None);
        let alive = view(vec![
            board("b0", BoardState::Alive, &[]),
            board("b1", BoardState::Suspect, &[]),
            board("b2", BoardState::Alive, &[]),
        ]);
        let same = effective(Arc::clone(&stored), &alive, &desired, reading);
        assert!(Arc::ptr_eq(&same, &stored), "{same:?}");
        let b1_dead = view(vec![
            board("b0", BoardState::Alive, &[]),
            board("b1", BoardState::Dead, &[]),
            board("b2", BoardState::Alive, &[]),
        ]);
        let ahead = effective(Arc::clone(&stored), &b1_dead, &desired, reading);
        let f = ahead.function(&key("f")).unwrap();
        assert_eq!(f.placed(), 1);
        assert!(!f.boards.contains_key("b1"), "{f:?}");
        // What ran elsewhere stays where it was.
        assert_eq!(ahead.function(&key("g")), stored.function(&key("g")));
        // The placer, from the same inputs, stores exactly this plan.
        let input = super::super::placer::input(&b1_dead, &desired, (*stored).clone(), reading);
        assert_eq!(*ahead, crate::placement::place(&input));
    }

    #[test]
    fn a_board_runs_its_functions_with_their_secrets_and_nothing_else() {
        let mut desired = Desired::default();
        desired.functions.insert(
            key("f"),
            Versioned {
                value: record(2, &["token"]),
                revision: 3,
            },
        );
        desired.functions.insert(
            key("g"),
            Versioned {
                value: record(1, &[]),
                revision: 4,
            },
        );
        let token = SecretKey {
            namespace: "openfaas-fn".into(),
            name: "token".into(),
        };
        desired.secrets.insert(token.clone(), 9);
        let plan = Plan {
            functions: vec![
                placed("f", &[("b0", 1), ("b1", 1)], "b0"),
                placed("g", &[("b1", 1)], "b1"),
                placed("gone", &[("b0", 1)], "b0"),
            ],
            ..Plan::default()
        };
        let mut cache = HashMap::new();
        assert_eq!(
            secrets_needed("b0", &plan, &desired, &cache),
            [(token.clone(), 9)]
        );
        cache.insert(
            token.clone(),
            SecretValue {
                revision: 9,
                value: b"v".to_vec(),
            },
        );
        assert!(secrets_needed("b0", &plan, &desired, &cache).is_empty());
        let mine = target("b0", &plan, &desired, &cache);
        // `gone` was deleted after the plan was made: not deployed again.
        assert_eq!(mine.functions.keys().collect::<Vec<_>>(), [&key("f")]);
        assert_eq!(mine.functions[&key("f")].replicas, 1);
        assert_eq!(mine.secrets.keys().collect::<Vec<_>>(), [&token]);
        let theirs = target("b1", &plan, &desired, &cache);
        assert_eq!(theirs.functions.len(), 2);
        assert!(theirs.secrets.contains_key(&token));
        assert!(target("b2", &plan, &desired, &cache).functions.is_empty());
    }
}
