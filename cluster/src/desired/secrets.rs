//! Secrets in the shared state: each value sealed with the cluster's [`crate::identity::SealKey`]
//! under its KV key (`<namespace>.<name>`, the associated data: a sealed value copied to
//! another key does not open), never in the clear in KV, in the mirror (names only) or in a
//! log. A board that runs a function using a secret gets the plaintext with
//! [`DesiredStore::open_secret`] and writes it to its root-only secret store.

use bramble_gateway::types::Secret;

use super::error::DesiredError;
use super::mirror::{DesiredBucket, Stored};
use super::records::{SECRETS_BUCKET, SecretKey, SecretRecord, Stamp, decode, encode};
use super::store::DesiredStore;

impl DesiredStore {
    /// Creates or replaces a secret (its namespace must exist). 400 without a value.
    pub async fn put_secret(&self, secret: Secret) -> Result<Stored, DesiredError> {
        self.store_secret(secret, false).await
    }

    /// Creates a secret; 409 when the cluster has one of that name (nothing is replaced).
    pub async fn create_secret(&self, secret: Secret) -> Result<Stored, DesiredError> {
        self.store_secret(secret, true).await
    }

    async fn store_secret(&self, secret: Secret, create: bool) -> Result<Stored, DesiredError> {
        let namespace = self.namespace_of(secret.namespace.as_deref());
        let key = SecretKey::new(&namespace, &secret.name)?;
        let value = secret
            .into_value()
            .map_err(|message| DesiredError::invalid("value", message))?;
        self.require_namespace(&namespace).await?;
        let kv_key = key.kv_key();
        let what = format!("storing secret {} in namespace {namespace}", key.name);
        self.probe(&self.secrets, &kv_key, &what).await?;
        let record = SecretRecord {
            sealed: self.seal.seal(&kv_key, &value),
            changed: Stamp::now(&self.config.board),
        };
        let stored = if create {
            self.secrets.create(&kv_key, encode(&record)).await
        } else {
            self.secrets.put(&kv_key, encode(&record)).await
        };
        let exists = || {
            format!(
                "secret {} already exists in namespace {namespace}",
                key.name
            )
        };
        let revision = stored.map_err(|e| self.kv_error(e, &what, true, exists))?;
        Ok(self.confirmed(DesiredBucket::Secrets, revision).await)
    }

    /// Deletes a secret. 404 when it does not exist; 409 while a function uses it (as the
    /// single-board provider) or when it was replaced meanwhile.
    pub async fn delete_secret(&self, namespace: &str, name: &str) -> Result<Stored, DesiredError> {
        let key = SecretKey::new(namespace, name)?;
        let users: Vec<String> = self
            .snapshot()
            .functions_in(namespace)
            .filter(|(_, f)| f.value.deployment.secrets.iter().any(|s| s == name))
            .map(|(k, _)| k.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(DesiredError::Conflict(format!(
                "secret {name} is used by: {}",
                users.join(", ")
            )));
        }
        let what = format!("deleting secret {name} in namespace {namespace}");
        let kv_key = key.kv_key();
        let revision = match self.secrets.entry_from_leader(&kv_key).await {
            Ok(Some(entry)) => entry.revision,
            Ok(None) => {
                return Err(DesiredError::NotFound(format!(
                    "secret {name} not found in namespace {namespace}"
                )));
            }
            Err(e) => return Err(self.kv_error(e, &what, false, String::new)),
        };
        let revision = self
            .secrets
            .delete_if(&kv_key, revision)
            .await
            .map_err(|e| {
                self.kv_error(e, &what, true, || {
                    format!("secret {name} in namespace {namespace} was replaced by another board meanwhile; nothing was changed: retry")
                })
            })?;
        Ok(self.confirmed(DesiredBucket::Secrets, revision).await)
    }

    /// A secret's plaintext, for the board's root-only secret store. Read with a direct get
    /// (which a board cut off from the majority can still answer), from the stream leader
    /// when that copy is older than what the mirror has seen. 404 when it does not exist; 500
    /// when it does not open with this cluster's key.
    pub async fn open_secret(&self, namespace: &str, name: &str) -> Result<Vec<u8>, DesiredError> {
        let key = SecretKey::new(namespace, name)?;
        let kv_key = key.kv_key();
        let what = format!("reading secret {name} in namespace {namespace}");
        let seen = self.snapshot().secrets.get(&key).copied().unwrap_or(0);
        let mut entry = self
            .secrets
            .entry(&kv_key)
            .await
            .map_err(|e| self.kv_error(e, &what, false, String::new))?;
        if entry.as_ref().is_none_or(|e| e.revision < seen) {
            match self.secrets.entry_from_leader(&kv_key).await {
                Ok(fresh) => entry = fresh,
                Err(e) => {
                    tracing::debug!(secret = %kv_key, error = %bramble_base::error_chain(&e), "the leader does not answer; using the replica's copy");
                }
            }
        }
        let Some(entry) = entry else {
            return Err(DesiredError::NotFound(format!(
                "secret {name} not found in namespace {namespace}"
            )));
        };
        let record: SecretRecord = decode(SECRETS_BUCKET, &kv_key, &entry.value)?;
        self.seal
            .open(&kv_key, &record.sealed)
            .map_err(|source| DesiredError::Sealed {
                key: kv_key,
                source,
            })
    }

    /// Deletes every secret of a namespace that was just deleted (best effort: one left
    /// behind is logged; it would reappear in a namespace of the same name).
    pub(super) async fn delete_secrets_of(&self, namespace: &str) {
        let keys = match self
            .secrets
            .keys_from_leader(&format!("{namespace}.*"))
            .await
        {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(namespace, error = %bramble_base::error_chain(&e), "cannot list the deleted namespace's secrets; they stay");
                return;
            }
        };
        for key in keys {
            if let Err(e) = self.secrets.delete(&key).await {
                tracing::warn!(secret = %key, error = %bramble_base::error_chain(&e), "cannot delete a secret of the deleted namespace");
            }
        }
    }
}
