//! A board's own functions, deployed before it was in a cluster, taken into the cluster's
//! desired state ([`ClusterProvider::import`]) with the namespaces and secrets they use.
//!
//! The board (the agent) reads what it runs outside the cluster — its functions without
//! [`SPEC_ANNOTATION`] — and hands it over; each function is stored like a deploy through the
//! API (checked, admitted, compare-and-set), with its replica count and the annotation
//! [`IMPORTED_FROM`], by which the placer puts its first replica back on the board it came from
//! (where it already runs). The board then marks its own copy with the digest returned here, so
//! the board's reconciler takes it over as the cluster's instead of leaving it alone: no
//! restart, no second copy.
//!
//! Nothing of the cluster is overwritten: a function, or a secret it uses, that the cluster
//! already has under the same name with another content is left out with the reason, and keeps
//! running on the board outside the cluster. Importing again what was imported changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bramble_gateway::provider::{Provider, ProviderError, ProviderResult};
use bramble_gateway::types::{FunctionDeployment, FunctionNamespace, Secret};

use super::ClusterProvider;
use crate::desired::{DesiredStore, FunctionKey, SecretKey};
use crate::membership::BoardState;
use crate::reconcile::{SPEC_ANNOTATION, spec_digest};

pub use crate::placement::IMPORTED_FROM;

/// How long an import waits for the cluster to see this board alive (so that the placer can
/// put the functions back where they run).
const SEEN_ALIVE: Duration = Duration::from_secs(30);

/// What a board runs outside the cluster.
#[derive(Debug, Default)]
pub struct OwnState {
    /// Its namespaces (those the functions below use are imported when the cluster lacks them).
    pub namespaces: Vec<FunctionNamespace>,
    /// Its secrets' values, by key (those the functions below use are imported).
    pub secrets: BTreeMap<SecretKey, Vec<u8>>,
    /// Its functions (namespace set), with their desired replicas.
    pub functions: Vec<(FunctionDeployment, u64)>,
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Functions that are the cluster's now, with the [`SPEC_ANNOTATION`] value the board
    /// marks its own copy with (imported by this call or an earlier one).
    pub functions: Vec<(FunctionKey, String)>,
    /// Namespaces created in the cluster.
    pub namespaces: Vec<String>,
    /// Secrets written into the cluster.
    pub secrets: Vec<SecretKey>,
    /// Functions left outside the cluster, with why.
    pub left: Vec<(FunctionKey, String)>,
}

/// A refusal that concerns one item (it stays out), as opposed to one of the cluster (no
/// quorum, …: the whole import is tried again later).
fn item_refusal(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::Invalid { .. } | ProviderError::Conflict(_) | ProviderError::NotFound(_)
    )
}

fn without_import_mark(deployment: &FunctionDeployment) -> FunctionDeployment {
    let mut plain = deployment.clone();
    plain.annotations.remove(IMPORTED_FROM);
    plain.annotations.remove(SPEC_ANNOTATION);
    plain
}

impl<L: Provider> ClusterProvider<L> {
    /// Takes `own` into the cluster's desired state as imported from `board` (see the module
    /// docs). An error means the cluster could not take changes (nothing more was done; try
    /// again later); a function refused on its own is in [`Imported::left`].
    pub async fn import(&self, board: &str, own: OwnState) -> ProviderResult<Imported> {
        let Some((node, parts)) = self.writer()? else {
            return Err(ProviderError::Unavailable(
                "this board is not in a cluster".into(),
            ));
        };
        let mut imported = Imported::default();
        if own.functions.is_empty() {
            return Ok(imported);
        }
        // The placer puts the first replica back here only once it sees this board alive.
        let mut view = parts.membership.watch();
        let alive = view.wait_for(|v| v.in_state(BoardState::Alive).any(|b| b == board));
        if tokio::time::timeout(SEEN_ALIVE, alive).await.is_err() {
            tracing::warn!(
                "the cluster has not seen this board alive yet; importing its functions anyway"
            );
        }
        let desired = &parts.desired;
        // Why a secret the functions use keeps them out (the cluster holds it with another
        // value, …), by secret; checked once each.
        let mut refused: BTreeMap<SecretKey, String> = BTreeMap::new();
        let mut checked: BTreeSet<SecretKey> = BTreeSet::new();
        for (deployment, replicas) in own.functions {
            let namespace = desired.namespace_of(deployment.namespace.as_deref());
            let key = match FunctionKey::new(&namespace, &deployment.service) {
                Ok(key) => key,
                Err(e) => {
                    let key = FunctionKey::of(&namespace, &deployment.service);
                    imported.left.push((key, e.to_string()));
                    continue;
                }
            };
            if !desired.snapshot().namespaces.contains_key(&namespace) {
                let wanted = own
                    .namespaces
                    .iter()
                    .find(|n| n.name == namespace)
                    .cloned()
                    .unwrap_or_else(|| FunctionNamespace {
                        name: namespace.clone(),
                        ..FunctionNamespace::default()
                    });
                match desired
                    .create_namespace(wanted)
                    .await
                    .map_err(ProviderError::from)
                {
                    Ok(_) => imported.namespaces.push(namespace.clone()),
                    Err(ProviderError::Conflict(_)) => {}
                    Err(e) if item_refusal(&e) => {
                        imported.left.push((key, format!("its namespace: {e}")));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let mut blocked = None;
            for name in &deployment.secrets {
                let secret = match SecretKey::new(&namespace, name) {
                    Ok(secret) => secret,
                    Err(e) => {
                        blocked = Some(format!("it uses secret {name}: {e}"));
                        break;
                    }
                };
                if checked.insert(secret.clone()) {
                    match import_secret(desired, &secret, own.secrets.get(&secret)).await? {
                        Ok(true) => imported.secrets.push(secret.clone()),
                        Ok(false) => {}
                        Err(why) => {
                            refused.insert(secret.clone(), why);
                        }
                    }
                }
                if let Some(why) = refused.get(&secret) {
                    blocked = Some(format!("it uses secret {name}: {why}"));
                    break;
                }
            }
            if let Some(why) = blocked {
                imported.left.push((key, why));
                continue;
            }
            let mut deployment = without_import_mark(&deployment);
            deployment.namespace = Some(namespace.clone());
            deployment
                .annotations
                .insert(IMPORTED_FROM.to_owned(), board.to_owned());
            if desired.snapshot().function(&namespace, &key.name).is_none() {
                let stored = match self.admit(&node, &parts, &deployment, Some(replicas)) {
                    Ok(replicas) => desired
                        .deploy(deployment.clone(), replicas)
                        .await
                        .map(|_| ())
                        .map_err(ProviderError::from),
                    Err(e) => Err(e),
                };
                match stored {
                    // Deployed by another board meanwhile: compared below.
                    Ok(()) | Err(ProviderError::Conflict(_)) => {}
                    Err(e) if item_refusal(&e) => {
                        imported.left.push((key, e.to_string()));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let snapshot = desired.snapshot();
            let Some(record) = snapshot.function(&namespace, &key.name) else {
                imported.left.push((
                    key,
                    "the cluster deleted it while it was being imported".into(),
                ));
                continue;
            };
            if without_import_mark(&record.value.deployment) == without_import_mark(&deployment) {
                imported
                    .functions
                    .push((key, spec_digest(&record.value.deployment)));
            } else {
                imported
                    .left
                    .push((key, "the cluster has another function of that name".into()));
            }
        }
        Ok(imported)
    }
}

/// Writes a secret a function being imported uses, unless the cluster has it: `Ok(true)`
/// written, `Ok(false)` the cluster has the same value, `Err(why)` it stays out.
async fn import_secret(
    desired: &DesiredStore,
    key: &SecretKey,
    value: Option<&Vec<u8>>,
) -> ProviderResult<Result<bool, String>> {
    let Some(value) = value else {
        return Ok(Err("this board does not have it".into()));
    };
    if !desired.snapshot().secrets.contains_key(key) {
        let secret = Secret {
            name: key.name.clone(),
            namespace: Some(key.namespace.clone()),
            value: None,
            raw_value: Some(value.clone()),
        };
        match desired
            .create_secret(secret)
            .await
            .map_err(ProviderError::from)
        {
            Ok(_) => return Ok(Ok(true)),
            // Created by another board meanwhile: compared below.
            Err(ProviderError::Conflict(_)) => {}
            Err(e) if item_refusal(&e) => return Ok(Err(e.to_string())),
            Err(e) => return Err(e),
        }
    }
    let theirs = desired
        .open_secret(&key.namespace, &key.name)
        .await
        .map_err(ProviderError::from)?;
    Ok(if *value == theirs {
        Ok(false)
    } else {
        Err("the cluster holds it with another value".into())
    })
}
