//! The board's reconciler: makes the board's own provider run what the cluster assigned to it.
//!
//! The placer decides which boards run which functions; each board is told its part as a
//! [`Target`] (the namespaces, the functions with this board's replica count, the secrets those
//! functions use) and [`reconcile`] drives the local provider — today's single-board
//! `LocalProvider`, unchanged — until it runs exactly that: namespaces created or updated,
//! secrets written, functions deployed, updated, scaled, and the ones the cluster no longer
//! gives this board deleted.
//!
//! What the board already runs is read back from the local provider, so a restart needs no memory
//! of earlier passes: every function the reconciler deploys carries the annotation
//! [`SPEC_ANNOTATION`], a digest of its deployment, and is updated only when the digest differs (a
//! scale alone never rolls a function out). Functions without the annotation were not deployed by
//! the cluster (deployed before the board joined, and not imported: the board hands its own
//! functions to the cluster at start, [`crate::provider::import`], and marks those the cluster
//! took with the annotation): they are never touched, and the report lists them. A replica
//! count is applied when the cluster's count changes (and on the first pass): a
//! function the board scaled to zero because it sat idle stays there until a request wakes it,
//! instead of being started again by every pass. Namespaces are created and updated, never deleted
//! (a namespace is cheap, and a function deployed by hand may live in it). Secrets are written when
//! this pass has not written the same revision before (each pass after a restart writes them once),
//! and removed once no function of this board uses them: a secret's value is in the clear only
//! on the boards whose functions need it. Removed are the secrets the cluster stores (or this
//! process wrote) that no function here uses — one made on the board by hand, under a name the
//! cluster does not know, and one a function deployed by hand uses, stay.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bramble_gateway::provider::{Provider, ProviderError};
use bramble_gateway::types::{FunctionDeployment, FunctionNamespace, Secret};
use sha2::{Digest, Sha256};

/// The annotation that marks a function the cluster deployed, with its deployment's digest.
pub const SPEC_ANNOTATION: &str = "com.bramble.cluster.spec";

pub use crate::desired::SecretKey;
pub use crate::function_key::FunctionKey;

/// One function this board must run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    /// The deployment as stored in the cluster (its `namespace` set).
    pub deployment: FunctionDeployment,
    /// This board's replicas; 0 keeps the function here, scaled to zero (its home board).
    pub replicas: u64,
}

/// A secret's value as a function of this board needs it, with the revision it was stored at.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue {
    /// The cluster's revision of the value.
    pub revision: u64,
    /// The plaintext.
    pub value: Vec<u8>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret's value never reaches a log line.
        f.debug_struct("SecretValue")
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Everything this board must run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// Namespaces, by name (those of the assigned functions at least).
    pub namespaces: BTreeMap<String, FunctionNamespace>,
    /// Functions, by `(namespace, name)`.
    pub functions: BTreeMap<FunctionKey, Assigned>,
    /// The secrets the assigned functions use, by `(namespace, name)`.
    pub secrets: BTreeMap<SecretKey, SecretValue>,
    /// Every secret the cluster stores (values are not here): those of them this board holds
    /// and no function here uses are removed.
    pub known_secrets: BTreeSet<SecretKey>,
}

/// What one pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    CreatedNamespace(String),
    UpdatedNamespace(String),
    WroteSecret(SecretKey),
    Deployed(FunctionKey),
    Updated(FunctionKey),
    Scaled(FunctionKey, u64),
    Deleted(FunctionKey),
    RemovedSecret(SecretKey),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::CreatedNamespace(name) => write!(f, "created namespace {name}"),
            Action::UpdatedNamespace(name) => write!(f, "updated namespace {name}"),
            Action::WroteSecret(key) => {
                write!(
                    f,
                    "wrote secret {} in namespace {}",
                    key.name, key.namespace
                )
            }
            Action::Deployed(key) => write!(f, "deployed {key}"),
            Action::Updated(key) => write!(f, "updated {key}"),
            Action::Scaled(key, replicas) => write!(f, "scaled {key} to {replicas}"),
            Action::Deleted(key) => write!(f, "deleted {key}"),
            Action::RemovedSecret(key) => write!(
                f,
                "removed secret {} in namespace {} (no function here uses it)",
                key.name, key.namespace
            ),
        }
    }
}

/// What a failed change was about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Namespace(String),
    Secret(SecretKey),
    Function(FunctionKey),
    /// Reading what the board runs (the pass stopped there).
    Listing,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Namespace(name) => write!(f, "namespace {name}"),
            Subject::Secret(key) => write!(f, "secret {} in namespace {}", key.name, key.namespace),
            Subject::Function(key) => write!(f, "function {key}"),
            Subject::Listing => f.write_str("the board's functions"),
        }
    }
}

/// What one pass did and what it could not do.
#[derive(Debug, Default)]
pub struct Report {
    /// Changes made, in order.
    pub actions: Vec<Action>,
    /// Changes that failed (retried on the next pass), with the local provider's error.
    pub failed: Vec<(Subject, ProviderError)>,
    /// Functions on this board the cluster did not deploy (left alone).
    pub unmanaged: Vec<FunctionKey>,
    /// Functions the cluster gives this board that one it did not deploy holds the name of
    /// (left alone; the board imports its own functions at start, after which they are the
    /// cluster's: tried again).
    pub held: Vec<FunctionKey>,
}

impl Report {
    /// True when the board runs its target.
    pub fn converged(&self) -> bool {
        self.failed.is_empty() && self.held.is_empty()
    }
}

/// What [`reconcile`] remembers between passes: the secret revisions it wrote, and the
/// replica counts it applied.
#[derive(Debug, Default)]
pub struct Memory {
    secrets: HashMap<SecretKey, u64>,
    /// Secrets written by an earlier pass that the target no longer has (to remove).
    stale: BTreeSet<SecretKey>,
    replicas: HashMap<FunctionKey, u64>,
}

/// The digest [`SPEC_ANNOTATION`] carries: of the deployment as the cluster stores it, without
/// the annotation itself.
pub fn spec_digest(deployment: &FunctionDeployment) -> String {
    let mut plain = deployment.clone();
    plain.annotations.remove(SPEC_ANNOTATION);
    // Serialising a struct of maps and vectors cannot fail; an empty digest input would only
    // make every pass update the function, never skip one wrongly.
    let bytes = serde_json::to_vec(&plain).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..12])
}

/// One pass: brings the local provider to `target`. Each change is independent: one that fails
/// is reported and the rest still happen.
pub async fn reconcile<L: Provider>(local: &L, target: &Target, memory: &mut Memory) -> Report {
    let mut report = Report::default();
    namespaces(local, target, &mut report).await;
    secrets(local, target, memory, &mut report).await;
    functions(local, target, memory, &mut report).await;
    // After the functions: one that moved away used its secrets until it was deleted.
    remove_secrets(local, target, memory, &mut report).await;
    report
}

async fn namespaces<L: Provider>(local: &L, target: &Target, report: &mut Report) {
    for (name, wanted) in &target.namespaces {
        let key = || Subject::Namespace(name.clone());
        match local.get_namespace(name).await {
            Ok(Some(have)) if have == *wanted => {}
            Ok(Some(_)) => match local.update_namespace(wanted.clone()).await {
                Ok(()) => report.actions.push(Action::UpdatedNamespace(name.clone())),
                Err(e) => report.failed.push((key(), e)),
            },
            Ok(None) => match local.create_namespace(wanted.clone()).await {
                Ok(()) => report.actions.push(Action::CreatedNamespace(name.clone())),
                Err(e) => report.failed.push((key(), e)),
            },
            Err(e) => report.failed.push((key(), e)),
        }
    }
}

async fn secrets<L: Provider>(
    local: &L,
    target: &Target,
    memory: &mut Memory,
    report: &mut Report,
) {
    for (key, secret) in &target.secrets {
        if memory.secrets.get(key) == Some(&secret.revision) {
            continue;
        }
        let put = Secret {
            name: key.name.clone(),
            namespace: Some(key.namespace.clone()),
            value: None,
            raw_value: Some(secret.value.clone()),
        };
        match local.put_secret(put).await {
            Ok(()) => {
                memory.secrets.insert(key.clone(), secret.revision);
                report.actions.push(Action::WroteSecret(key.clone()));
            }
            Err(e) => report.failed.push((Subject::Secret(key.clone()), e)),
        }
    }
    let gone: Vec<SecretKey> = memory
        .secrets
        .keys()
        .filter(|key| !target.secrets.contains_key(*key))
        .cloned()
        .collect();
    for key in gone {
        memory.secrets.remove(&key);
        memory.stale.insert(key);
    }
}

/// Removes the secrets this board holds for the cluster that no function here uses.
async fn remove_secrets<L: Provider>(
    local: &L,
    target: &Target,
    memory: &mut Memory,
    report: &mut Report,
) {
    let candidates: BTreeSet<SecretKey> = target
        .known_secrets
        .iter()
        .chain(&memory.stale)
        .filter(|key| !target.secrets.contains_key(*key))
        .cloned()
        .collect();
    // Kept only where this pass could not remove them (tried again on the next).
    let stale = std::mem::take(&mut memory.stale);
    let namespaces: BTreeSet<&str> = candidates.iter().map(|k| k.namespace.as_str()).collect();
    for namespace in namespaces {
        let (held, functions) = match (
            local.list_secrets(namespace).await,
            local.list_functions(namespace).await,
        ) {
            (Ok(held), Ok(functions)) => (held, functions),
            (Err(ProviderError::NotFound(_)), _) | (_, Err(ProviderError::NotFound(_))) => {
                continue;
            }
            (Err(e), _) | (_, Err(e)) => {
                report.failed.push((Subject::Listing, e));
                memory
                    .stale
                    .extend(stale.iter().filter(|k| k.namespace == namespace).cloned());
                continue;
            }
        };
        // Used by a function still here (one deployed by hand included): kept.
        let used: BTreeSet<&str> = functions
            .iter()
            .flat_map(|f| f.secrets.iter().map(String::as_str))
            .collect();
        for secret in held {
            let key = SecretKey {
                namespace: namespace.to_owned(),
                name: secret.name.clone(),
            };
            if !candidates.contains(&key) || used.contains(secret.name.as_str()) {
                continue;
            }
            match local.delete_secret(&key.name, namespace).await {
                Ok(()) | Err(ProviderError::NotFound(_)) => {
                    report.actions.push(Action::RemovedSecret(key));
                }
                Err(e) => {
                    if stale.contains(&key) {
                        memory.stale.insert(key.clone());
                    }
                    report.failed.push((Subject::Secret(key), e));
                }
            }
        }
    }
}

async fn functions<L: Provider>(
    local: &L,
    target: &Target,
    memory: &mut Memory,
    report: &mut Report,
) {
    // What runs here now, per namespace of the target and of the board.
    let mut namespaces: Vec<String> = target.namespaces.keys().cloned().collect();
    match local.list_namespaces().await {
        Ok(have) => namespaces.extend(have),
        Err(e) => {
            report.failed.push((Subject::Listing, e));
            return;
        }
    }
    namespaces.sort();
    namespaces.dedup();
    let mut running: BTreeMap<FunctionKey, (Option<String>, u64)> = BTreeMap::new();
    for namespace in &namespaces {
        match local.list_functions(namespace).await {
            Ok(list) => {
                for f in list {
                    let digest = f.annotations.get(SPEC_ANNOTATION).cloned();
                    running.insert(FunctionKey::of(namespace, &f.name), (digest, f.replicas));
                }
            }
            Err(ProviderError::NotFound(_)) => {}
            Err(e) => {
                report.failed.push((Subject::Listing, e));
                return;
            }
        }
    }
    for (key, assigned) in &target.functions {
        let digest = spec_digest(&assigned.deployment);
        let mut deployment = assigned.deployment.clone();
        deployment.namespace = Some(key.namespace.clone());
        deployment
            .annotations
            .insert(SPEC_ANNOTATION.to_owned(), digest.clone());
        // The replicas running now; `None` right after a deploy (the deployment's own minimum).
        let result = match running.get(key) {
            None => local.deploy(deployment).await.map(|()| {
                report.actions.push(Action::Deployed(key.clone()));
                None
            }),
            Some((None, _)) => {
                // Deployed on this board before it joined: not the cluster's to change (until
                // the board imported it and marked it as the cluster's).
                report.held.push(key.clone());
                continue;
            }
            Some((Some(have), replicas)) if *have != digest => {
                local.update(deployment).await.map(|()| {
                    report.actions.push(Action::Updated(key.clone()));
                    Some(*replicas)
                })
            }
            Some((Some(_), replicas)) => Ok(Some(*replicas)),
        };
        let replicas_now = match result {
            Ok(replicas) => replicas,
            Err(e) => {
                report.failed.push((Subject::Function(key.clone()), e));
                continue;
            }
        };
        let applied = memory.replicas.get(key) == Some(&assigned.replicas);
        if replicas_now != Some(assigned.replicas) && !applied {
            match local
                .scale(&key.name, &key.namespace, assigned.replicas)
                .await
            {
                Ok(()) => report
                    .actions
                    .push(Action::Scaled(key.clone(), assigned.replicas)),
                Err(e) => {
                    report.failed.push((Subject::Function(key.clone()), e));
                    continue;
                }
            }
        }
        memory.replicas.insert(key.clone(), assigned.replicas);
    }
    memory
        .replicas
        .retain(|key, _| target.functions.contains_key(key));
    for (key, (digest, _)) in &running {
        if target.functions.contains_key(key) {
            continue;
        }
        if digest.is_none() {
            report.unmanaged.push(key.clone());
            continue;
        }
        match local.delete(&key.name, &key.namespace).await {
            Ok(()) | Err(ProviderError::NotFound(_)) => {
                report.actions.push(Action::Deleted(key.clone()));
            }
            Err(e) => report.failed.push((Subject::Function(key.clone()), e)),
        }
    }
}
