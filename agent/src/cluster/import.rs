//! The board's own functions, deployed before it was in a cluster (on the first board before
//! `cluster init`, on another before `cluster join`), handed to the cluster at start
//! ([`ClusterProvider::import`]) with the namespaces and secrets they use, then marked as the
//! cluster's in the board's store: they keep running where they are, listed and changed through
//! any board like every function of the cluster. A function the cluster already has under its
//! name with another deployment (or a secret it uses, with another value) stays outside the
//! cluster, running here, and the log says why at every start.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bramble_cluster::desired::{FunctionKey, SecretKey};
use bramble_cluster::node::ClusterNode;
use bramble_cluster::provider::import::{Imported, OwnState};
use bramble_cluster::reconcile::SPEC_ANNOTATION;
use bramble_gateway::types::FunctionNamespace;
use tokio::sync::watch;

use super::NodeProvider;
use crate::store::{Store, StoreError};

/// How soon an import the cluster could not take (no quorum yet, …) is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// Hands this board's own functions to the cluster once it can take them (retrying until it
/// can), then marks those it took. `done` is set (or dropped) once it is over.
pub(super) async fn import_own_functions(
    provider: Arc<NodeProvider>,
    node: Weak<ClusterNode>,
    store: Arc<Store>,
    done: watch::Sender<bool>,
) {
    import(&provider, &node, &store).await;
    done.send_replace(true);
}

async fn import(provider: &NodeProvider, node: &Weak<ClusterNode>, store: &Store) {
    let Some(board) = node.upgrade().map(|n| n.board()) else {
        return;
    };
    // Those that stay outside the cluster hold their names here: nothing of the cluster's by
    // those names is placed on this board (the board's record says so).
    let outside = |keys: BTreeSet<FunctionKey>| {
        if let Some(node) = node.upgrade() {
            node.update_me(|me| me.outside = keys);
        }
    };
    // The desired state this board sees is the cluster's whole one from here on.
    provider.routes_ready().await;
    loop {
        let own = match own_state(store).await {
            Ok(own) => own,
            Err(e) => {
                tracing::error!(error = %bramble_base::error_chain(&e), "cannot read this board's own functions to hand them to the cluster");
                return;
            }
        };
        if own.functions.is_empty() {
            return;
        }
        let count = own.functions.len();
        match provider.import(&board, own).await {
            Ok(imported) => {
                if let Err(e) = mark(store, &imported.functions).await {
                    tracing::error!(error = %bramble_base::error_chain(&e), "the cluster took this board's own functions, but marking them as the cluster's failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                report(&imported, count);
                outside(imported.left.iter().map(|(k, _)| k.clone()).collect());
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand this board's own functions to the cluster yet (they keep running here); retrying in {}s", RETRY.as_secs());
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

fn report(imported: &Imported, count: usize) {
    if !imported.functions.is_empty() {
        let names: Vec<String> = imported
            .functions
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        tracing::info!(
            functions = %names.join(", "),
            namespaces = imported.namespaces.len(),
            secrets = imported.secrets.len(),
            "this board's own functions are the cluster's now ({} of {count})",
            imported.functions.len()
        );
    }
    for (key, why) in &imported.left {
        tracing::warn!(function = %key, "this board's own function stays outside the cluster (it keeps running here; rename or remove it to import it): {why}");
    }
}

/// What this board runs outside the cluster: its functions without [`SPEC_ANNOTATION`], its
/// namespaces, and the values of the secrets those functions use.
pub(crate) async fn own_state(store: &Store) -> Result<OwnState, StoreError> {
    let state = store.snapshot();
    let mut own = OwnState {
        namespaces: state
            .namespaces
            .iter()
            .map(|(name, record)| FunctionNamespace {
                name: name.clone(),
                labels: record.labels.clone(),
                annotations: record.annotations.clone(),
            })
            .collect(),
        ..OwnState::default()
    };
    for (namespace, name, record) in state.all_functions() {
        if record.deployment.annotations.contains_key(SPEC_ANNOTATION) {
            continue;
        }
        let mut deployment = record.deployment.clone();
        deployment.namespace = Some(namespace.to_owned());
        for secret in &deployment.secrets {
            let Ok(key) = SecretKey::new(namespace, secret) else {
                continue;
            };
            // One missing is left out: the import says so.
            if let Some(value) = store.read_secret(namespace, secret).await? {
                own.secrets.insert(key, value);
            }
        }
        tracing::debug!(function = %name, namespace, "this board's own function");
        own.functions.push((deployment, record.replicas));
    }
    Ok(own)
}

/// Marks the functions the cluster took as the cluster's (the board's reconciler then runs
/// them as it runs any function the cluster gives it: no restart, no second copy).
pub(crate) async fn mark(
    store: &Store,
    functions: &[(FunctionKey, String)],
) -> Result<(), StoreError> {
    if functions.is_empty() {
        return Ok(());
    }
    store
        .update(|state| {
            for (key, digest) in functions {
                if let Some(record) = state
                    .functions
                    .get_mut(&key.namespace)
                    .and_then(|f| f.get_mut(&key.name))
                {
                    record
                        .deployment
                        .annotations
                        .insert(SPEC_ANNOTATION.to_owned(), digest.clone());
                }
            }
            Ok::<_, StoreError>(())
        })
        .await
}
