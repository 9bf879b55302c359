//! The board's part of the plan, run: whenever the plan or the desired state changes, the board
//! works out its [`Target`] (the functions the plan gives it, with their deployments from the
//! desired state, the namespaces, the secrets those functions use, opened with the cluster's
//! key) and [`reconcile`]s its own provider to it. A pass that could not do everything is
//! repeated every few seconds.
//!
//! Nothing runs before the first plan is read and the desired state's mirror is current: "no
//! plan read yet" must never read as "run nothing" (that would delete the board's functions at
//! every restart).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bramble_gateway::provider::Provider;
use bramble_gateway::types::FunctionNamespace;
use tokio::sync::watch;

use super::Parts;
use crate::desired::{Desired, DesiredStore, SecretKey};
use crate::placement::Plan;
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

/// Runs `board`'s part of the plan on `local` for as long as the node runs.
pub async fn run<L: Provider>(
    board: String,
    parts: Arc<Parts>,
    mut plan: watch::Receiver<Option<Arc<Plan>>>,
    local: Arc<L>,
) {
    let mut desired = parts.desired.mirror().subscribe();
    let mut memory = Memory::default();
    let mut cache: HashMap<SecretKey, SecretValue> = HashMap::new();
    loop {
        let current_plan = plan.borrow_and_update().clone();
        let snapshot = desired.borrow_and_update().clone();
        let mut settled = true;
        if let Some(current_plan) = current_plan.filter(|_| snapshot.is_current()) {
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
            () = retry => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{secrets_needed, target};
    use crate::desired::{Desired, SecretKey, Versioned};
    use crate::fixtures::{key, placed, record};
    use crate::placement::Plan;
    use crate::reconcile::SecretValue;

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
