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
//! - Reads (`list_functions`, `get_function`, `list_namespaces`, `get_namespace`,
//!   `list_secrets`) use [`DesiredStore::snapshot`]: no KV round trip per read.
//! - `deploy` → [`DesiredStore::deploy`] (409 when it exists), `update` →
//!   [`DesiredStore::update`], `scale` → [`DesiredStore::scale`], `delete` →
//!   [`DesiredStore::delete`]; namespaces and secrets likewise. The provider first runs its
//!   own checks of the deployment (settings, hardware grants, triggers, replicas bound) and
//!   computes the initial replicas; the store checks names, the namespace and the secrets.
//! - Every write answers once stored **and** shown by this board's mirror, so a deploy then a
//!   list on the same board lists it. Errors convert with `ProviderError::from`.
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
