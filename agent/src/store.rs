//! The node's persistent state under the state directory:
//!
//! ```text
//! <state>/state.json                      desired state: functions, namespaces (0600)
//! <state>/secrets/basic-auth-user         API credentials, faasd's layout (0600)
//! <state>/secrets/basic-auth-password
//! <state>/function-secrets/<ns>/<name>    function secrets (dirs 0700, files 0600)
//! ```
//!
//! Every change goes to a copy of the state that is written atomically (temp file, fsync,
//! rename, fsync of the directory) and only then becomes the current state: a failed write —
//! a full SD card, a power cut — leaves the previous state on disk and in memory, and
//! `state.json` always parses.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bramble_gateway::types::FunctionDeployment;
use serde::{Deserialize, Serialize};

/// Version of the `state.json` layout.
const STATE_VERSION: u32 = 1;
/// The desired state's file in the state directory.
const STATE_FILE: &str = "state.json";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is corrupt ({reason}); it was left untouched — restore it from a backup or move it away to start empty", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

impl StoreError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The write failed because the filesystem (or the quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if matches!(
            source.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ))
    }
}

/// A deployed function as the node wants it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// The deployment as received (namespace filled in).
    pub deployment: FunctionDeployment,
    /// Desired replicas (0 = scaled to zero).
    pub replicas: u64,
    /// When the function was first deployed.
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    /// Incremented by every update; part of container ids, so old and new replicas can run
    /// side by side during an update.
    pub generation: u64,
    /// While an update rolls out: the record that served before it. It is saved in the same
    /// write as the new record, so a daemon killed in the middle of the rollout resumes it
    /// after its restart (the old generation serving meanwhile) and can still roll back to
    /// it. `None` once the new generation serves or the update was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<FunctionRecord>>,
}

impl FunctionRecord {
    /// The record without its pending rollout.
    pub fn settled(&self) -> FunctionRecord {
        FunctionRecord {
            deployment: self.deployment.clone(),
            replicas: self.replicas,
            created_at: self.created_at,
            generation: self.generation,
            previous: None,
        }
    }
}

/// A namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Everything the node persists about what it should run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// namespace → function name → record.
    pub functions: BTreeMap<String, BTreeMap<String, FunctionRecord>>,
    pub namespaces: BTreeMap<String, NamespaceRecord>,
}

impl State {
    fn new(default_namespace: &str) -> Self {
        let labels = [("openfaas".to_owned(), "1".to_owned())]
            .into_iter()
            .collect();
        Self {
            version: STATE_VERSION,
            functions: BTreeMap::new(),
            namespaces: [(
                default_namespace.to_owned(),
                NamespaceRecord {
                    labels,
                    annotations: BTreeMap::new(),
                },
            )]
            .into_iter()
            .collect(),
        }
    }

    /// A function's record.
    pub fn function(&self, name: &str, namespace: &str) -> Option<&FunctionRecord> {
        self.functions.get(namespace).and_then(|f| f.get(name))
    }

    /// Every function, as (namespace, name, record).
    pub fn all_functions(&self) -> impl Iterator<Item = (&str, &str, &FunctionRecord)> {
        self.functions.iter().flat_map(|(ns, fns)| {
            fns.iter()
                .map(move |(name, r)| (ns.as_str(), name.as_str(), r))
        })
    }
}

/// API credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiCredentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for ApiCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The persistent store.
///
/// The current state is an [`Arc`] in a `watch` channel: a read is a pointer copy, and
/// whatever follows the desired state (the triggers, a cluster's publisher) subscribes to it.
/// Changes are serialised by an async lock; each one is applied to a copy, written atomically
/// on a blocking thread (two fsyncs — slow on an SD card, never on an async worker), and only
/// then made current.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    current: tokio::sync::watch::Sender<Arc<State>>,
    /// One change at a time.
    writer: tokio::sync::Mutex<()>,
}

impl Store {
    /// Opens (creating if needed) the state directory. A corrupt `state.json` is an error, not
    /// a silent reset: losing every deployed function because of one bad write would be worse
    /// than refusing to start. Blocking: call it at start-up, before serving.
    pub fn open(dir: &Path, default_namespace: &str) -> Result<Store, StoreError> {
        create_dir(dir, 0o755)?;
        create_dir(&dir.join("secrets"), 0o700)?;
        create_dir(&dir.join("function-secrets"), 0o700)?;
        let path = dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: State =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if state.version != STATE_VERSION {
                    return Err(StoreError::Corrupt {
                        path,
                        reason: format!(
                            "layout version {} is not {STATE_VERSION} (written by another bramble version)",
                            state.version
                        ),
                    });
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::new(default_namespace),
            Err(source) => return Err(StoreError::io("reading", &path, source)),
        };
        // Leftovers of writes interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if bramble_base::is_leftover_temp(&entry.file_name().to_string_lossy(), STATE_FILE)
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            current: tokio::sync::watch::channel(Arc::new(state)).0,
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current state (a pointer copy).
    pub fn snapshot(&self) -> Arc<State> {
        Arc::clone(&self.current.borrow())
    }

    /// The current state now and after every persisted change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<State>> {
        self.current.subscribe()
    }

    /// Applies `change` to a copy of the state, persists it, and makes it current. When
    /// `change` fails or the write fails, nothing changes. Changes are applied one at a time,
    /// each to the state the previous one left.
    pub async fn update<R, E>(
        &self,
        change: impl FnOnce(&mut State) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let _writer = self.writer.lock().await;
        let current = self.snapshot();
        let mut next = State::clone(&current);
        let result = change(&mut next)?;
        if next != *current {
            let path = self.dir.join(STATE_FILE);
            let bytes = serde_json::to_vec_pretty(&next).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            write_blocking(path, bytes, 0o600).await?;
            self.current.send_replace(Arc::new(next));
        }
        Ok(result)
    }

    /// The API credentials, generated on first use (user `admin`, a random 40-character
    /// password) and stored where faasd keeps them, readable by root only. Blocking: call it
    /// at start-up or from a blocking context.
    pub fn api_credentials(&self) -> Result<(ApiCredentials, bool), StoreError> {
        let user_path = self.dir.join("secrets/basic-auth-user");
        let password_path = self.dir.join("secrets/basic-auth-password");
        let read = |p: &Path| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
        match (read(&user_path), read(&password_path)) {
            (Ok(user), Ok(password)) if !user.is_empty() && !password.is_empty() => {
                Ok((ApiCredentials { user, password }, false))
            }
            _ => {
                let password = random_password(40);
                write_atomic(&user_path, b"admin", 0o600)?;
                write_atomic(&password_path, password.as_bytes(), 0o600)?;
                Ok((
                    ApiCredentials {
                        user: "admin".into(),
                        password,
                    },
                    true,
                ))
            }
        }
    }

    /// Replaces the API credentials (a board joining a cluster takes the cluster's login).
    pub fn set_api_credentials(&self, credentials: &ApiCredentials) -> Result<(), StoreError> {
        write_atomic(
            &self.dir.join("secrets/basic-auth-user"),
            credentials.user.as_bytes(),
            0o600,
        )?;
        write_atomic(
            &self.dir.join("secrets/basic-auth-password"),
            credentials.password.as_bytes(),
            0o600,
        )?;
        Ok(())
    }

    /// Where a function secret is kept.
    pub fn secret_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.secrets_dir(namespace).join(name)
    }

    fn secrets_dir(&self, namespace: &str) -> PathBuf {
        self.dir.join("function-secrets").join(namespace)
    }

    /// Creates or replaces a secret (0600).
    pub async fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        let dir = self.secrets_dir(namespace);
        let path = self.secret_path(namespace, name);
        blocking(move || {
            create_dir(&dir, 0o700)?;
            write_atomic(&path, &value, 0o600)
        })
        .await
    }

    /// A secret's value; `None` when it does not exist.
    pub async fn read_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.secret_path(namespace, name);
        blocking(move || match std::fs::read(&path) {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::io("reading", &path, source)),
        })
        .await
    }

    /// Removes a secret; `false` when it did not exist.
    pub async fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let path = self.secret_path(namespace, name);
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::io("removing", &path, source)),
        })
        .await
    }

    /// Names of a namespace's secrets, sorted.
    pub async fn list_secrets(&self, namespace: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.secrets_dir(namespace);
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(source) => return Err(StoreError::io("listing", &dir, source)),
            };
            let mut names: Vec<String> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            names.sort();
            Ok(names)
        })
        .await
    }

    /// Does the secret exist?
    pub async fn has_secret(&self, namespace: &str, name: &str) -> bool {
        tokio::fs::metadata(self.secret_path(namespace, name))
            .await
            .is_ok_and(|m| m.is_file())
    }
}

/// Runs blocking file work on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        StoreError::io(
            "waiting for",
            Path::new("a file operation"),
            std::io::Error::other(e),
        )
    })?
}

/// [`write_atomic`] on a blocking thread.
async fn write_blocking(path: PathBuf, bytes: Vec<u8>, mode: u32) -> Result<(), StoreError> {
    blocking(move || write_atomic(&path, &bytes, mode)).await
}

/// Writes `bytes` to `path` atomically with `mode` ([`bramble_base::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    bramble_base::write_atomic(path, bytes, mode)
        .map_err(|source| StoreError::io("writing", path, source))
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| StoreError::io("creating", dir, e))?;
    // An existing directory keeps a safe mode too.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| StoreError::io("securing", dir, e))
}

fn random_password(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

/// `SystemTime` as RFC 3339 in JSON.
pub(crate) mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn record(name: &str) -> FunctionRecord {
        FunctionRecord {
            deployment: FunctionDeployment {
                service: name.into(),
                image: "x".into(),
                ..Default::default()
            },
            replicas: 1,
            created_at: SystemTime::UNIX_EPOCH,
            generation: 1,
            previous: None,
        }
    }

    #[tokio::test]
    async fn state_survives_reopening_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "openfaas-fn").unwrap();
        store
            .update(|s| {
                s.functions
                    .entry("openfaas-fn".into())
                    .or_default()
                    .insert("f".into(), record("f"));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let again = Store::open(dir.path(), "openfaas-fn").unwrap();
        assert_eq!(
            again
                .snapshot()
                .function("f", "openfaas-fn")
                .unwrap()
                .replicas,
            1
        );
        assert!(again.snapshot().namespaces.contains_key("openfaas-fn"));
        assert_eq!(
            std::fs::metadata(dir.path().join("state.json"))
                .unwrap()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("secrets"))
                .unwrap()
                .mode()
                & 0o777,
            0o700
        );
    }

    #[tokio::test]
    async fn a_pending_rollout_is_saved_with_its_record_and_older_states_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "ns").unwrap();
        let old = record("f");
        let mut new = record("f");
        new.deployment.image = "y".into();
        new.generation = 2;
        new.previous = Some(Box::new(old.clone()));
        store
            .update(|s| {
                s.functions
                    .entry("ns".into())
                    .or_default()
                    .insert("f".into(), new.clone());
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let again = Store::open(dir.path(), "ns").unwrap().snapshot();
        let saved = again.function("f", "ns").unwrap();
        assert_eq!(saved, &new);
        assert_eq!(saved.previous.as_deref(), Some(&old));
        assert_eq!(saved.settled().previous, None);
        assert_eq!(saved.settled().generation, 2);

        // A state.json written before rollouts were saved has no `previous`.
        let mut raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
        raw["functions"]["ns"]["f"]
            .as_object_mut()
            .unwrap()
            .remove("previous")
            .unwrap();
        std::fs::write(dir.path().join("state.json"), raw.to_string()).unwrap();
        let older = Store::open(dir.path(), "ns").unwrap().snapshot();
        assert_eq!(older.function("f", "ns").unwrap().previous, None);
        // And a settled record writes no `previous` at all.
        assert!(
            !serde_json::to_string(&old)
                .unwrap()
                .contains("\"previous\"")
        );
    }

    #[tokio::test]
    async fn a_failed_change_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "ns").unwrap();
        let before = std::fs::read(dir.path().join("state.json")).ok();
        let r: Result<(), StoreError> = store
            .update(|s| {
                s.namespaces.clear();
                Err(StoreError::Corrupt {
                    path: "x".into(),
                    reason: "refused".into(),
                })
            })
            .await;
        assert!(r.is_err());
        assert!(store.snapshot().namespaces.contains_key("ns"));
        assert_eq!(std::fs::read(dir.path().join("state.json")).ok(), before);
    }

    #[tokio::test]
    async fn a_failed_write_keeps_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "ns").unwrap();
        store
            .update(|s| {
                s.functions
                    .entry("ns".into())
                    .or_default()
                    .insert("a".into(), record("a"));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        // Make the directory unwritable for the temp file: replace it by a read-only one.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        let r = store
            .update(|s| {
                s.functions
                    .entry("ns".into())
                    .or_default()
                    .insert("b".into(), record("b"));
                Ok::<_, StoreError>(())
            })
            .await;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if nix::unistd::Uid::effective().is_root() {
            // root ignores directory permissions; the full-disk case is covered by the daemon's tests
            return;
        }
        assert!(r.is_err());
        assert!(store.snapshot().function("b", "ns").is_none());
        assert!(
            Store::open(dir.path(), "ns")
                .unwrap()
                .snapshot()
                .function("a", "ns")
                .is_some()
        );
    }

    #[test]
    fn corrupt_state_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), b"{ half a write").unwrap();
        let e = Store::open(dir.path(), "ns").unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("state.json"), "{e}");
        assert_eq!(
            std::fs::read(dir.path().join("state.json")).unwrap(),
            b"{ half a write"
        );
    }

    #[test]
    fn credentials_are_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "ns").unwrap();
        let (first, generated) = store.api_credentials().unwrap();
        assert!(generated);
        assert_eq!(first.user, "admin");
        assert_eq!(first.password.len(), 40);
        let (second, generated) = store.api_credentials().unwrap();
        assert!(!generated);
        assert_eq!(first, second);
        let meta = std::fs::metadata(dir.path().join("secrets/basic-auth-password")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(!format!("{first:?}").contains(&first.password));
    }

    #[tokio::test]
    async fn secrets_are_stored_privately_and_listed_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "ns").unwrap();
        store.put_secret("ns", "b", b"2".to_vec()).await.unwrap();
        store.put_secret("ns", "a", b"1".to_vec()).await.unwrap();
        assert_eq!(store.list_secrets("ns").await.unwrap(), ["a", "b"]);
        assert_eq!(
            std::fs::metadata(store.secret_path("ns", "a"))
                .unwrap()
                .mode()
                & 0o777,
            0o600
        );
        assert!(store.delete_secret("ns", "a").await.unwrap());
        assert!(!store.delete_secret("ns", "a").await.unwrap());
        assert!(store.list_secrets("other").await.unwrap().is_empty());
    }
}
