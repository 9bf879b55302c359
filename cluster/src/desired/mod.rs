//! The cluster's one desired state: functions, namespaces and secrets in three replicated KV
//! buckets (issue 15, "One desired state").
//!
//! | file | what |
//! |---|---|
//! | `records.rs` | the buckets, keys (checked names) and records: [`FunctionKey`], [`SecretKey`], [`FunctionRecord`], [`NamespaceRecord`], [`SecretRecord`], [`Stamp`] |
//! | `store.rs` | [`DesiredStore`]: opening the buckets, every write of functions and namespaces |
//! | `secrets.rs` | secret writes, sealed under the cluster's key; [`DesiredStore::open_secret`] |
//! | `mirror.rs` | [`Mirror`]: the board's in-memory [`Desired`] (a `tokio::sync::watch`), fed by `kv::follow`; [`Mirror::wait_for`] |
//! | `error.rs` | [`DesiredError`] with its HTTP status, mapped from `KvError`; [`Quorum`] |
//!
//! # How a `ClusterProvider` uses it (the gateway's `Provider` trait)
//!
//! The provider runs its own checks of a deployment first (settings, hardware grants,
//! triggers, the replica bound, the initial replicas — `agent::function` today); the store
//! checks names, the namespace and the secrets, and does the compare-and-set. Errors convert
//! with `ProviderError::from(DesiredError)` (same status, same message).
//!
//! | `Provider` method | here |
//! |---|---|
//! | `list_functions`, `get_function` | [`DesiredStore::snapshot`] → [`Desired::functions_in`], [`Desired::function`] (replicas from the record; available replicas and boards from the placement, later) |
//! | `deploy` | [`DesiredStore::deploy`]`(deployment, initial_replicas)` — 409 when it exists |
//! | `update` | [`DesiredStore::update`] — 404, or 409 when another board changed it meanwhile |
//! | `scale` | [`DesiredStore::scale`] — retries on conflicts |
//! | `delete` | [`DesiredStore::delete`] |
//! | `list_namespaces`, `get_namespace` | [`Desired::namespaces`] (the default one always there) |
//! | `create_namespace`, `update_namespace`, `delete_namespace` | [`DesiredStore::create_namespace`], [`DesiredStore::update_namespace`], [`DesiredStore::delete_namespace`] |
//! | `list_secrets` | [`Desired::secret_names`] (names only) |
//! | `put_secret`, `delete_secret` | [`DesiredStore::put_secret`], [`DesiredStore::delete_secret`] |
//! | (the board's reconciler) | [`Mirror::subscribe`] for changes, [`DesiredStore::open_secret`] for a secret a local replica needs |
//!
//! Every write answers once stored **and** shown by this board's mirror ([`Mirror::wait_for`],
//! at most [`DesiredConfig::confirm`]), so a deploy then a list on the same board lists it.
//!
//! The buckets are made by the founder (replicas `node::replicas_for` the JetStream boards),
//! opened by the others; the node's layout task changes the replicas of every stream as the
//! cluster grows or shrinks, these included. What 1 and 2 JetStream boards give: R1 and R2 —
//! with two, either board's death stops writes (no quorum), reads of the mirror go on.

mod error;
mod mirror;
mod records;
mod secrets;
mod store;

pub use error::{DesiredError, Quorum};
pub use mirror::{Desired, DesiredBucket, Mirror, Stored, Versioned};
pub use records::{
    FUNCTIONS_BUCKET, FunctionKey, FunctionRecord, NAMESPACES_BUCKET, NamespaceRecord,
    SECRETS_BUCKET, SecretKey, SecretRecord, Stamp, namespace_key,
};
pub use store::{DesiredConfig, DesiredStore};
