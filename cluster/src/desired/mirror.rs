//! The board's in-memory copy of the desired state: a `tokio::sync::watch` of [`Desired`], fed
//! by [`kv::follow`] over the three buckets. Every read of the API and of the placer uses it;
//! no read goes to KV.
//!
//! **How stale it can be.** A change shows here when this board's watch delivers it: on a
//! healthy cluster within a millisecond or two of the write's acknowledgement (the tests wait
//! for it, they do not measure it). A write made through this board's [`super::DesiredStore`]
//! is answered only once it shows here ([`Mirror::wait_for`]), so a `deploy` then `list` on
//! one board always lists it. Changes made on *other* boards can lag: after a stream leader
//! change the watch is re-established (0.1–9 s measured on 2.9.10, see [`kv::follow`]); on a
//! board cut off from the majority nothing new arrives until the partition heals, and the
//! mirror keeps the last state it saw meanwhile. Decisions that must not act on stale state
//! go through compare-and-set on the revision ([`super::DesiredStore`] does so for every
//! write).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::records::{
    FUNCTIONS_BUCKET, FunctionKey, FunctionRecord, NAMESPACES_BUCKET, NamespaceRecord,
    SECRETS_BUCKET, SecretKey, decode,
};
use crate::kv::{self, Bucket, Change};

/// A value and the revision it was stored at.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its revision in its bucket.
    pub revision: u64,
}

/// One of the three buckets; revisions count per bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DesiredBucket {
    /// [`FUNCTIONS_BUCKET`].
    Functions,
    /// [`NAMESPACES_BUCKET`].
    Namespaces,
    /// [`SECRETS_BUCKET`].
    Secrets,
}

impl DesiredBucket {
    /// Every bucket.
    pub const ALL: [DesiredBucket; 3] = [
        DesiredBucket::Functions,
        DesiredBucket::Namespaces,
        DesiredBucket::Secrets,
    ];

    /// The bucket's name.
    pub fn name(self) -> &'static str {
        match self {
            DesiredBucket::Functions => FUNCTIONS_BUCKET,
            DesiredBucket::Namespaces => NAMESPACES_BUCKET,
            DesiredBucket::Secrets => SECRETS_BUCKET,
        }
    }

    fn index(self) -> usize {
        match self {
            DesiredBucket::Functions => 0,
            DesiredBucket::Namespaces => 1,
            DesiredBucket::Secrets => 2,
        }
    }
}

/// What a write stored: the bucket and the revision. [`Mirror::wait_for`] waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The bucket written.
    pub bucket: DesiredBucket,
    /// The revision of the write (of the delete marker for a delete).
    pub revision: u64,
}

/// The desired state of the whole cluster as this board's mirror has it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// Every function.
    pub functions: BTreeMap<FunctionKey, Versioned<FunctionRecord>>,
    /// Every namespace.
    pub namespaces: BTreeMap<String, Versioned<NamespaceRecord>>,
    /// Every secret's name, with the revision of its (sealed) value; values are never here.
    pub secrets: BTreeMap<SecretKey, u64>,
    /// Per bucket (functions, namespaces, secrets): the latest revision applied.
    revisions: [u64; 3],
    /// Per bucket: whether every value that existed when the watch started has been applied.
    current: [bool; 3],
}

impl Desired {
    /// One function.
    pub fn function(&self, namespace: &str, name: &str) -> Option<&Versioned<FunctionRecord>> {
        self.functions.get(&FunctionKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The functions of a namespace, by name.
    pub fn functions_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a FunctionKey, &'a Versioned<FunctionRecord>)> + 'a {
        self.functions
            .iter()
            .filter(move |(k, _)| k.namespace == namespace)
    }

    /// The secret names of a namespace, sorted.
    pub fn secret_names(&self, namespace: &str) -> Vec<String> {
        self.secrets
            .keys()
            .filter(|k| k.namespace == namespace)
            .map(|k| k.name.clone())
            .collect()
    }

    /// Whether a secret exists.
    pub fn has_secret(&self, namespace: &str, name: &str) -> bool {
        self.secrets.contains_key(&SecretKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The latest revision of `bucket` applied here.
    pub fn revision(&self, bucket: DesiredBucket) -> u64 {
        self.revisions[bucket.index()]
    }

    /// True once every bucket's watch delivered the values that existed when it started
    /// (before that the mirror can miss functions that exist).
    pub fn is_current(&self) -> bool {
        self.current.iter().all(|c| *c)
    }

    /// Whether this mirror shows `stored`.
    pub fn shows(&self, stored: Stored) -> bool {
        self.revision(stored.bucket) >= stored.revision
    }

    /// Applies one change of `bucket`. Idempotent (a re-established watch can deliver a value
    /// twice). A record that does not parse is left out, with a warning.
    fn apply(&mut self, bucket: DesiredBucket, change: Change) {
        let revision = change.revision();
        match change {
            Change::Current => self.current[bucket.index()] = true,
            Change::Put {
                key,
                value,
                revision,
            } => self.put(bucket, &key, &value, revision),
            Change::Delete { key, .. } => self.remove(bucket, &key),
        }
        if let Some(r) = revision {
            let seen = &mut self.revisions[bucket.index()];
            *seen = (*seen).max(r);
        }
    }

    fn put(&mut self, bucket: DesiredBucket, key: &str, value: &[u8], revision: u64) {
        let parsed = match bucket {
            DesiredBucket::Functions => FunctionKey::from_kv_key(key).ok_or(None).and_then(|k| {
                decode::<FunctionRecord>(FUNCTIONS_BUCKET, key, value)
                    .map(|value| {
                        self.functions.insert(k, Versioned { value, revision });
                    })
                    .map_err(Some)
            }),
            DesiredBucket::Namespaces => super::records::namespace_key(key)
                .map_err(|_| None)
                .and_then(|k| {
                    decode::<NamespaceRecord>(NAMESPACES_BUCKET, key, value)
                        .map(|value| {
                            self.namespaces.insert(k, Versioned { value, revision });
                        })
                        .map_err(Some)
                }),
            DesiredBucket::Secrets => SecretKey::from_kv_key(key).ok_or(None).map(|k| {
                self.secrets.insert(k, revision);
            }),
        };
        if let Err(e) = parsed {
            self.remove(bucket, key);
            match e {
                Some(e) => tracing::warn!(error = %e, "left out of the desired state"),
                None => tracing::warn!(
                    bucket = bucket.name(),
                    key,
                    "a key bramble does not write; left out of the desired state"
                ),
            }
        }
    }

    fn remove(&mut self, bucket: DesiredBucket, key: &str) {
        match bucket {
            DesiredBucket::Functions => {
                if let Some(k) = FunctionKey::from_kv_key(key) {
                    self.functions.remove(&k);
                }
            }
            DesiredBucket::Namespaces => {
                self.namespaces.remove(key);
            }
            DesiredBucket::Secrets => {
                if let Some(k) = SecretKey::from_kv_key(key) {
                    self.secrets.remove(&k);
                }
            }
        }
    }
}

/// The board's mirror of the desired state. Dropping it stops its watches.
#[derive(Debug)]
pub struct Mirror {
    state: watch::Receiver<Arc<Desired>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Most changes folded into one new [`Desired`] (one clone of the state per batch).
const BATCH: usize = 256;

impl Mirror {
    /// Starts following the three buckets (on the current tokio runtime), in the order of
    /// [`DesiredBucket::ALL`].
    pub fn start(functions: Bucket, namespaces: Bucket, secrets: Bucket) -> Mirror {
        let (tx, state) = watch::channel(Arc::new(Desired::default()));
        let tasks = [functions, namespaces, secrets]
            .into_iter()
            .zip(DesiredBucket::ALL)
            .map(|(bucket, which)| tokio::spawn(feed(which, kv::follow(bucket), tx.clone())))
            .collect();
        Mirror { state, tasks }
    }

    /// The state now.
    pub fn snapshot(&self) -> Arc<Desired> {
        self.state.borrow().clone()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Desired>> {
        self.state.clone()
    }

    /// Waits until this mirror shows `stored`, at most `timeout`; false when it did not.
    pub async fn wait_for(&self, stored: Stored, timeout: Duration) -> bool {
        self.wait_until(|d| d.shows(stored), timeout).await
    }

    /// Waits until every bucket's current values are here, at most `timeout`.
    pub async fn wait_current(&self, timeout: Duration) -> bool {
        self.wait_until(Desired::is_current, timeout).await
    }

    async fn wait_until(&self, f: impl Fn(&Desired) -> bool, timeout: Duration) -> bool {
        let mut state = self.state.clone();
        matches!(
            tokio::time::timeout(timeout, state.wait_for(|d| f(d))).await,
            Ok(Ok(_))
        )
    }
}

/// Applies the changes of one bucket to the shared state, in batches.
async fn feed(
    bucket: DesiredBucket,
    mut changes: mpsc::Receiver<Change>,
    state: watch::Sender<Arc<Desired>>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while changes.recv_many(&mut batch, BATCH).await > 0 {
        state.send_modify(|desired| {
            let desired = Arc::make_mut(desired);
            for change in batch.drain(..) {
                desired.apply(bucket, change);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::records::{Stamp, encode};
    use bytes::Bytes;

    fn function(name: &str, replicas: u64) -> Bytes {
        encode(&FunctionRecord {
            deployment: serde_json::from_value(
                serde_json::json!({"service": name, "image": "nginx:1", "namespace": "ns"}),
            )
            .unwrap(),
            replicas,
            generation: 1,
            created: Stamp::now("pi1"),
            changed: Stamp::now("pi1"),
        })
    }

    fn put(key: &str, value: Bytes, revision: u64) -> Change {
        Change::Put {
            key: key.into(),
            value,
            revision,
        }
    }

    #[test]
    fn applies_changes_idempotently_and_counts_revisions() {
        let mut d = Desired::default();
        d.apply(DesiredBucket::Functions, put("ns.a", function("a", 1), 3));
        d.apply(DesiredBucket::Functions, put("ns.a", function("a", 1), 3));
        d.apply(DesiredBucket::Functions, put("ns.b", function("b", 2), 4));
        assert_eq!(d.functions.len(), 2);
        assert_eq!(d.function("ns", "b").unwrap().value.replicas, 2);
        assert_eq!(d.function("ns", "b").unwrap().revision, 4);
        assert!(!d.is_current());
        for bucket in DesiredBucket::ALL {
            d.apply(bucket, Change::Current);
        }
        assert!(d.is_current());
        d.apply(
            DesiredBucket::Functions,
            Change::Delete {
                key: "ns.a".into(),
                revision: 5,
            },
        );
        assert!(d.function("ns", "a").is_none());
        assert_eq!(d.revision(DesiredBucket::Functions), 5);
        assert_eq!(d.revision(DesiredBucket::Secrets), 0);
        assert!(d.shows(Stored {
            bucket: DesiredBucket::Functions,
            revision: 5
        }));
        assert!(!d.shows(Stored {
            bucket: DesiredBucket::Namespaces,
            revision: 1
        }));
        assert_eq!(
            d.functions_in("ns")
                .map(|(k, _)| k.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );

        d.apply(
            DesiredBucket::Secrets,
            put("ns.tls=crt", Bytes::from_static(b"{}"), 1),
        );
        assert_eq!(d.secret_names("ns"), ["tls.crt"]);
        assert!(d.has_secret("ns", "tls.crt"));
    }

    #[test]
    fn leaves_out_what_does_not_parse() {
        let mut d = Desired::default();
        d.apply(DesiredBucket::Functions, put("ns.a", function("a", 1), 1));
        // A corrupt record replaces a good one: the key is left out, not kept stale.
        d.apply(
            DesiredBucket::Functions,
            put("ns.a", Bytes::from_static(b"{"), 2),
        );
        d.apply(DesiredBucket::Functions, put("nodot", function("x", 1), 3));
        d.apply(
            DesiredBucket::Namespaces,
            put("Bad", Bytes::from_static(b"{}"), 1),
        );
        assert!(d.functions.is_empty() && d.namespaces.is_empty());
        assert_eq!(d.revision(DesiredBucket::Functions), 3);
    }
}
