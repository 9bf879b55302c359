//! JetStream KV without the client's bucket-creation API.
//!
//! async-nats 0.52's `create_key_value` / `update_key_value` fail against nats-server 2.9 and
//! 2.10 (they read account fields the server sends only from 2.11). [`Bucket::open_or_create`]
//! creates the `KV_<bucket>` stream itself with the KV conventions (subjects `$KV.<bucket>.>`,
//! `max_messages_per_subject` = history, rollup allowed, delete denied, direct get, discard
//! new, 2-minute duplicate window) and then opens it with `get_key_value`.
//!
//! Writes are published here directly (`$KV.<bucket>.<key>`, with
//! `Nats-Expected-Last-Subject-Sequence` for compare-and-set and `KV-Operation: DEL` for
//! deletes), so every failure maps to one typed [`KvError`]:
//! - [`KvError::Conflict`]: `create` of an existing key, `update`/`delete_if` on a stale
//!   revision (JetStream error 10071).
//! - [`KvError::NoQuorum`]: no JetStream server answered for the bucket (the server replied
//!   "no responders", or "cluster not available"): nothing was written. This is what a board cut
//!   off from the majority gets.
//! - [`KvError::Timeout`]: no answer in time; the write may or may not have been stored (a
//!   leader can fail after storing it). Callers that must know read back.
//!
//! Reads (`get`, `entry`) use direct get, which any replica answers — possibly a follower a
//! little behind: compare-and-set with the revision read is what makes a decision safe.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, kv, stream};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};

use crate::jserr::{self, Cause};

/// How long a KV request waits for an answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A KV error.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// A compare-and-set lost: the key exists (`expected: None`, a create) or its revision is
    /// no longer `expected`.
    #[error("{bucket}/{key}: another write came first ({})", match expected { None => "the key already exists".to_owned(), Some(r) => format!("revision {r} is no longer the latest") })]
    Conflict {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The revision the write expected (`None` for a create).
        expected: Option<u64>,
    },
    /// No JetStream server answered for the bucket: the cluster has no quorum (or the bucket's
    /// stream has no leader). Nothing was written.
    #[error(
        "bucket {bucket}: the cluster has no quorum (no JetStream leader answered); nothing was written"
    )]
    NoQuorum {
        /// The bucket.
        bucket: String,
    },
    /// No answer in time; a write may or may not have been stored.
    #[error(
        "bucket {bucket}: no answer within {waited:?} (the cluster may have lost quorum; a write may or may not have been stored)"
    )]
    Timeout {
        /// The bucket.
        bucket: String,
        /// How long it waited.
        waited: Duration,
    },
    /// A watch's first snapshot held fewer keys than the stream counts (a consumer started
    /// right after a replica change; see [`Bucket::keys`]): start the watch again.
    #[error("bucket {bucket}: the watch's snapshot held {seen} keys, the stream has {expected}")]
    Incomplete {
        /// The bucket.
        bucket: String,
        /// Keys delivered.
        seen: u64,
        /// Keys the stream counted.
        expected: u64,
    },
    /// The bucket does not exist.
    #[error("bucket {bucket} does not exist")]
    NoBucket {
        /// The bucket.
        bucket: String,
    },
    /// A key or bucket name KV does not allow.
    #[error(
        "{what} {name:?} is not valid: KV names are 1-255 characters of A-Z a-z 0-9 - _ = / and inner dots"
    )]
    InvalidName {
        /// "key" or "bucket".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Any other failure of the NATS request.
    #[error("bucket {bucket}: {op} failed")]
    Nats {
        /// The bucket.
        bucket: String,
        /// The operation.
        op: &'static str,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
}

impl KvError {
    /// True when the failure means the cluster cannot currently commit writes (no quorum, or no
    /// answer): what a caller turns into "503: the cluster has no quorum".
    pub fn is_unavailable(&self) -> bool {
        matches!(self, KvError::NoQuorum { .. } | KvError::Timeout { .. })
    }

    /// True for a lost compare-and-set.
    pub fn is_conflict(&self) -> bool {
        matches!(self, KvError::Conflict { .. })
    }
}

/// How a bucket is made.
#[derive(Clone, Debug)]
pub struct BucketConfig {
    /// The bucket's name.
    pub name: String,
    /// Values kept per key (1 = the latest only).
    pub history: i64,
    /// Replicas (1, 2 or 3; more than the JetStream boards is refused by the server).
    pub replicas: usize,
    /// Largest value in bytes (-1: no limit but the server's `max_payload`).
    pub max_value_size: i32,
    /// Largest bucket in bytes (-1: no limit).
    pub max_bytes: i64,
}

impl BucketConfig {
    /// A bucket with one value per key, no size limits and `replicas` replicas.
    pub fn new(name: &str, replicas: usize) -> BucketConfig {
        BucketConfig {
            name: name.to_owned(),
            history: 1,
            replicas,
            max_value_size: -1,
            max_bytes: -1,
        }
    }

    /// The stream configuration of the KV conventions.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: format!("KV_{}", self.name),
            subjects: vec![format!("$KV.{}.>", self.name)],
            max_messages_per_subject: self.history.max(1),
            max_bytes: self.max_bytes,
            max_message_size: self.max_value_size,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            num_replicas: self.replicas.max(1),
            ..Default::default()
        }
    }
}

/// A value and its revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Bytes,
    /// Its revision (the stream sequence of the write).
    pub revision: u64,
}

/// A change seen by [`Bucket::watch_all`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A key has a (new) value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
        /// Its revision.
        revision: u64,
    },
    /// A key was deleted (or purged).
    Delete {
        /// The key.
        key: String,
        /// The revision of the delete marker.
        revision: u64,
    },
    /// Every value that existed when the watch started has been delivered; what follows are
    /// new changes. Sent once.
    Current,
}

impl Change {
    /// The revision of a put or delete.
    pub fn revision(&self) -> Option<u64> {
        match self {
            Change::Put { revision, .. } | Change::Delete { revision, .. } => Some(*revision),
            Change::Current => None,
        }
    }
}

/// How a compare-and-set write (`update`, `delete_if`, `create` over a deleted key) is
/// enforced by the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CasMode {
    /// `Nats-Expected-Last-Subject-Sequence` = the key's revision. nats-server 2.10+ checks it
    /// when the write is applied. **2.9 checks it only on the stream leader before proposing**
    /// (`processJetStreamMsg` skips the check for clustered streams when the expected revision
    /// is not 0), so on a clustered 2.9 stream two racing updates from the same revision can
    /// both succeed — seen in the tests. Use only when every JetStream board runs 2.10+.
    PerKey,
    /// `Nats-Expected-Last-Sequence` = the bucket's last revision, read from the stream leader
    /// before the key's revision; 2.9 and 2.10 both check it when the write is applied, on
    /// every replica alike. A write to another key in between makes the server refuse the
    /// write; it is then retried (not reported as a conflict) while the key's revision is
    /// still the expected one. Costs two reads from the leader per write. The default.
    #[default]
    BucketWide,
}

impl CasMode {
    /// The mode that is safe for a cluster whose JetStream boards run `versions`.
    pub fn for_versions(versions: &[crate::engine::ServerVersion]) -> CasMode {
        if !versions.is_empty() && versions.iter().all(|v| (v.major, v.minor) >= (2, 10)) {
            CasMode::PerKey
        } else {
            CasMode::BucketWide
        }
    }
}

/// What a write expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Nothing,
    KeyRevision(u64),
    BucketRevision(u64),
}

/// A KV bucket.
#[derive(Clone, Debug)]
pub struct Bucket {
    js: jetstream::Context,
    store: kv::Store,
    name: String,
    timeout: Duration,
    cas: CasMode,
}

/// Checks a key or bucket name the way KV does.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), KvError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'/' | b'.'))
        && (what == "key" || !name.contains(['.', '/', '=']));
    if ok {
        Ok(())
    } else {
        Err(KvError::InvalidName {
            what,
            name: name.chars().take(80).collect(),
        })
    }
}

impl Bucket {
    /// Opens the bucket, creating its stream first when it does not exist. An existing
    /// bucket's configuration is left as it is (see [`Bucket::ensure_replicas`]).
    pub async fn open_or_create(
        js: &jetstream::Context,
        config: &BucketConfig,
    ) -> Result<Bucket, KvError> {
        validate_name("bucket", &config.name)?;
        let bucket = config.name.clone();
        match js.get_stream(format!("KV_{bucket}")).await {
            Ok(_) => {}
            Err(e) if jserr::cause(&e) == Cause::Code(jserr::STREAM_NOT_FOUND) => {
                create_stream(js, config.stream_config())
                    .await
                    .map_err(|e| classify(&bucket, "creating the bucket", e))?;
            }
            Err(e) => return Err(classify(&bucket, "looking up the bucket", e)),
        }
        Bucket::open(js, &bucket).await
    }

    /// Opens an existing bucket.
    pub async fn open(js: &jetstream::Context, bucket: &str) -> Result<Bucket, KvError> {
        validate_name("bucket", bucket)?;
        let store = js.get_key_value(bucket).await.map_err(|e| {
            if jserr::cause(&e) == Cause::Code(jserr::STREAM_NOT_FOUND) {
                KvError::NoBucket {
                    bucket: bucket.to_owned(),
                }
            } else {
                classify(bucket, "opening the bucket", e)
            }
        })?;
        Ok(Bucket {
            js: js.clone(),
            store,
            name: bucket.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            cas: CasMode::default(),
        })
    }

    /// The same bucket with another request timeout (default [`DEFAULT_TIMEOUT`]): how long a
    /// write waits for the cluster before [`KvError::Timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Bucket {
        self.js.set_timeout(timeout);
        self.timeout = timeout;
        self
    }

    /// The same bucket with another compare-and-set mode (default [`CasMode::BucketWide`]).
    pub fn with_cas(mut self, cas: CasMode) -> Bucket {
        self.cas = cas;
        self
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlying stream's name (`KV_<bucket>`).
    pub fn stream_name(&self) -> String {
        format!("KV_{}", self.name)
    }

    /// The latest value of `key`, `None` when absent or deleted.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        Ok(self.entry(key).await?.map(|e| e.value))
    }

    /// The latest value of `key` with its revision.
    pub async fn entry(&self, key: &str) -> Result<Option<Entry>, KvError> {
        validate_name("key", key)?;
        let entry = self.store.entry(key).await.map_err(|e| {
            if e.kind() == kv::EntryErrorKind::TimedOut {
                KvError::Timeout {
                    bucket: self.name.clone(),
                    waited: self.timeout,
                }
            } else {
                nats(&self.name, "reading", e)
            }
        })?;
        Ok(entry.and_then(|e| match e.operation {
            kv::Operation::Put => Some(Entry {
                value: e.value,
                revision: e.revision,
            }),
            kv::Operation::Delete | kv::Operation::Purge => None,
        }))
    }

    /// The latest value of `key` as the stream leader has it (not a direct get, which any
    /// replica answers — after a partition heals, a replica still catching up answers with
    /// old values for a moment). One request to the leader.
    pub async fn entry_from_leader(&self, key: &str) -> Result<Option<Entry>, KvError> {
        validate_name("key", key)?;
        let stream = self
            .js
            .get_stream_no_info(self.stream_name())
            .await
            .map_err(|e| classify(&self.name, "reading", e))?;
        match stream
            .get_last_raw_message_by_subject(&format!("$KV.{}.{key}", self.name))
            .await
        {
            Ok(message) => {
                let deleted = message
                    .headers
                    .get("KV-Operation")
                    .is_some_and(|v| v.as_str() == "DEL" || v.as_str() == "PURGE");
                Ok((!deleted).then(|| Entry {
                    value: message.payload,
                    revision: message.sequence,
                }))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(classify(&self.name, "reading", e)),
        }
    }

    /// Writes `key` only if it does not exist (or was deleted); `Conflict` otherwise.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        // "No revision yet" (0) is checked when applied on 2.9 too.
        match self
            .publish(key, value.clone(), Expect::KeyRevision(0), false)
            .await
        {
            Err(KvError::Conflict { .. }) => {}
            other => return other,
        }
        // A deleted key can be created again, on top of its delete marker.
        let latest = self
            .store
            .entry(key)
            .await
            .map_err(|e| nats(&self.name, "reading", e))?;
        match latest {
            Some(e) if e.operation != kv::Operation::Put => self
                .cas_write(key, value, e.revision, false)
                .await
                .map_err(|err| match err {
                    KvError::Conflict { bucket, key, .. } => KvError::Conflict {
                        bucket,
                        key,
                        expected: None,
                    },
                    other => other,
                }),
            _ => Err(KvError::Conflict {
                bucket: self.name.clone(),
                key: key.to_owned(),
                expected: None,
            }),
        }
    }

    /// Writes `key` only if its latest revision is `revision`; `Conflict` otherwise.
    pub async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        self.cas_write(key, value, revision, false).await
    }

    /// Writes `key` whatever it holds.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.publish(key, value, Expect::Nothing, false).await
    }

    /// Deletes `key` (a delete marker; watchers see it).
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.publish(key, Bytes::new(), Expect::Nothing, true)
            .await
            .map(|_| ())
    }

    /// Deletes `key` only if its latest revision is `revision`.
    pub async fn delete_if(&self, key: &str, revision: u64) -> Result<(), KvError> {
        self.cas_write(key, Bytes::new(), revision, true)
            .await
            .map(|_| ())
    }

    /// A compare-and-set write in this bucket's [`CasMode`].
    async fn cas_write(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
        delete: bool,
    ) -> Result<u64, KvError> {
        if revision == 0 || self.cas == CasMode::PerKey {
            return self
                .publish(key, value, Expect::KeyRevision(revision), delete)
                .await;
        }
        validate_name("key", key)?;
        let conflict = || KvError::Conflict {
            bucket: self.name.clone(),
            key: key.to_owned(),
            expected: Some(revision),
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            // The bucket's last revision first, then the key's, both from the stream leader:
            // if the write below applies at that bucket revision, nothing changed the key
            // after it was read.
            let stream = self
                .js
                .get_stream(self.stream_name())
                .await
                .map_err(|e| classify(&self.name, "reading the bucket's state", e))?;
            let last = stream.cached_info().state.last_sequence;
            let current = match stream
                .get_last_raw_message_by_subject(&format!("$KV.{}.{key}", self.name))
                .await
            {
                Ok(message) => message.sequence,
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
                Err(e) => return Err(classify(&self.name, "reading", e)),
            };
            if current != revision {
                return Err(conflict());
            }
            match self
                .publish(key, value.clone(), Expect::BucketRevision(last), delete)
                .await
            {
                Err(KvError::Conflict { .. }) if tokio::time::Instant::now() < deadline => {
                    // Another key was written meanwhile: read again.
                }
                Err(KvError::Conflict { .. }) => {
                    return Err(KvError::Timeout {
                        bucket: self.name.clone(),
                        waited: self.timeout,
                    });
                }
                other => return other,
            }
        }
    }

    async fn publish(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        delete: bool,
    ) -> Result<u64, KvError> {
        validate_name("key", key)?;
        let mut headers = HeaderMap::new();
        let expected = match expect {
            Expect::Nothing => None,
            Expect::KeyRevision(revision) => {
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    revision.to_string().as_str(),
                );
                Some(revision)
            }
            Expect::BucketRevision(revision) => {
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                    revision.to_string().as_str(),
                );
                Some(revision)
            }
        };
        if delete {
            headers.insert("KV-Operation", "DEL");
        }
        let subject = format!("$KV.{}.{key}", self.name);
        let ack = self
            .js
            .publish_with_headers(subject, headers, value)
            .await
            .map_err(|e| self.classify_publish(key, expected, e))?;
        let ack = tokio::time::timeout(self.timeout + Duration::from_millis(100), ack)
            .await
            .map_err(|_| KvError::Timeout {
                bucket: self.name.clone(),
                waited: self.timeout,
            })?
            .map_err(|e| self.classify_publish(key, expected, e))?;
        Ok(ack.sequence)
    }

    fn classify_publish(
        &self,
        key: &str,
        expected: Option<u64>,
        e: jetstream::context::PublishError,
    ) -> KvError {
        let bucket = self.name.clone();
        match e.kind() {
            PublishErrorKind::WrongLastSequence => KvError::Conflict {
                bucket,
                key: key.to_owned(),
                expected: expected.filter(|r| *r != 0),
            },
            PublishErrorKind::StreamNotFound => KvError::NoQuorum { bucket },
            PublishErrorKind::TimedOut => KvError::Timeout {
                bucket,
                waited: self.timeout,
            },
            _ => classify(&bucket, "writing", e),
        }
    }

    /// Every key with a value (not deleted).
    ///
    /// Read with a watch of the latest values, checked against the number of keys the stream
    /// leader counts, and read again when short: on 2.10.27, for a moment after a replica
    /// change, a new consumer can be told that fewer values are pending than there are (the
    /// client's own `keys()` then returns a partial list, even an empty one — seen in tests).
    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let mut watch = self.watch_all().await?.boxed();
            let mut keys = std::collections::BTreeMap::new();
            let attempt = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(change) = watch.next().await {
                    match change? {
                        Change::Put { key, .. } => {
                            keys.insert(key, true);
                        }
                        Change::Delete { key, .. } => {
                            keys.insert(key, false);
                        }
                        Change::Current => return Ok(true),
                    }
                }
                Ok::<_, KvError>(false)
            })
            .await;
            match attempt {
                Ok(Ok(true)) => {
                    return Ok(keys
                        .into_iter()
                        .filter_map(|(k, live)| live.then_some(k))
                        .collect());
                }
                Ok(Err(KvError::Incomplete { .. }) | Ok(false)) | Err(_) => {}
                Ok(Err(e)) => return Err(e),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(KvError::Timeout {
                    bucket: self.name.clone(),
                    waited: self.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The current values, then every change, as a stream: puts and deletes of every key,
    /// starting with each key's latest value, and [`Change::Current`] once those have all been
    /// delivered — checked against the number of keys the stream leader counted when the
    /// watch started; a short snapshot (see [`Bucket::keys`]) yields
    /// [`KvError::Incomplete`] instead, and the watch should be started again. The stream
    /// ends (or yields an error) when the watch breaks; [`follow`] handles all of this.
    pub async fn watch_all(
        &self,
    ) -> Result<impl Stream<Item = Result<Change, KvError>> + Send + use<>, KvError> {
        let expected = self.key_count().await?;
        let watch = self
            .store
            .watch_with_history(">")
            .await
            .map_err(|e| classify(&self.name, "watching", e))?;
        Ok(changes(self.name.clone(), watch, Some(expected)))
    }

    /// Every change from `revision` on (inclusive), for resuming a watch; starts with
    /// [`Change::Current`].
    pub async fn watch_from(
        &self,
        revision: u64,
    ) -> Result<impl Stream<Item = Result<Change, KvError>> + Send + use<>, KvError> {
        let watch = self
            .store
            .watch_all_from_revision(revision.max(1))
            .await
            .map_err(|e| classify(&self.name, "watching", e))?;
        Ok(changes(self.name.clone(), watch, None))
    }

    /// The bucket's latest revision (the stream's last sequence), from the stream leader.
    pub async fn last_revision(&self) -> Result<u64, KvError> {
        let stream = self
            .js
            .get_stream(self.stream_name())
            .await
            .map_err(|e| classify(&self.name, "reading the bucket's state", e))?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// Keys with a value or a delete marker, as the stream leader counts them.
    async fn key_count(&self) -> Result<u64, KvError> {
        let stream = self
            .js
            .get_stream(self.stream_name())
            .await
            .map_err(|e| classify(&self.name, "reading the bucket's state", e))?;
        Ok(stream.cached_info().state.subjects_count)
    }

    /// Sets the bucket's replicas to `replicas` (in place: the stream's configuration is
    /// updated, JetStream copies the data to the new peers). Returns the previous count.
    pub async fn ensure_replicas(&self, replicas: usize) -> Result<usize, KvError> {
        crate::layout::ensure_stream_replicas(&self.js, &self.stream_name(), replicas)
            .await
            .map_err(|e| KvError::Nats {
                bucket: self.name.clone(),
                op: "changing replicas",
                source: Box::new(e),
            })
    }
}

/// How long `follow` waits for a watch's consumer to be created before asking again.
const WATCH_CREATE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a silent watch asks the stream leader whether it missed something.
const STALL_CHECK: Duration = Duration::from_secs(2);

/// Follows every change of `bucket` for as long as the returned receiver is kept: the current
/// values, [`Change::Current`] once, then every change. When the watch breaks (a leader change,
/// a partition), it is re-established from the revision after the last one delivered, with a
/// backoff (up to 2 s); a short first snapshot ([`KvError::Incomplete`]) is read again from
/// the start; a watch that stays silent while the stream leader has newer revisions (two
/// checks 2 s apart) is re-established too. The receiver sees every change in order, a value possibly twice after such a
/// re-read (apply changes idempotently: by key, or by revision).
pub fn follow(bucket: Bucket) -> tokio::sync::mpsc::Receiver<Change> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        // A new stream leader means the watch's consumer (on the old leader) may be gone:
        // re-establish at once instead of waiting for the client to miss its heartbeats.
        let mut elected = bucket
            .js
            .client()
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{}",
                bucket.stream_name()
            ))
            .await
            .ok();
        let mut next: Option<u64> = None;
        let mut current_sent = false;
        let mut delay = Duration::from_millis(100);
        loop {
            // Consumer creation asked during a meta-leader election can go unanswered until
            // the client's own timeout (10 s in tests); ask again sooner.
            let create = async {
                match next {
                    None => bucket.watch_all().await.map(futures::StreamExt::boxed),
                    Some(revision) => bucket
                        .watch_from(revision)
                        .await
                        .map(futures::StreamExt::boxed),
                }
            };
            let watch = tokio::time::timeout(WATCH_CREATE_TIMEOUT, create)
                .await
                .unwrap_or_else(|_| {
                    Err(KvError::Timeout {
                        bucket: bucket.name.clone(),
                        waited: WATCH_CREATE_TIMEOUT,
                    })
                });
            match watch {
                Ok(mut changes) => {
                    // A watch whose consumer died with its stream leader can stay silent for
                    // a minute before the client notices (2.9.10, seen in tests): every few
                    // seconds of silence, ask the leader whether there is something newer.
                    let mut check = tokio::time::interval(STALL_CHECK);
                    check.reset();
                    let mut last_delivery = tokio::time::Instant::now();
                    let mut stalled = 0u8;
                    loop {
                        let item = tokio::select! {
                            item = changes.next() => item,
                            Some(_) = async {
                                match elected.as_mut() {
                                    Some(sub) => sub.next().await,
                                    None => std::future::pending().await,
                                }
                            } => {
                                tracing::debug!(bucket = bucket.name(), "new stream leader; re-establishing the watch");
                                break;
                            }
                            _ = check.tick() => {
                                let Some(expected) = next else { continue };
                                if last_delivery.elapsed() < STALL_CHECK {
                                    stalled = 0;
                                    continue;
                                }
                                // Bounded: while the stream has no leader the request goes
                                // unanswered until the client's timeout.
                                match tokio::time::timeout(STALL_CHECK / 2, bucket.last_revision()).await {
                                    Ok(Ok(last)) if last >= expected => {
                                        stalled += 1;
                                        if stalled >= 2 {
                                            tracing::debug!(bucket = bucket.name(), expected, "watch silent while the leader has newer revisions; resuming");
                                            break;
                                        }
                                    }
                                    Ok(Ok(_)) => stalled = 0,
                                    Ok(Err(_)) | Err(_) => {}
                                }
                                continue;
                            }
                        };
                        let Some(item) = item else { break };
                        match item {
                            Ok(Change::Current) if current_sent => {}
                            Ok(change) => {
                                delay = Duration::from_millis(100);
                                last_delivery = tokio::time::Instant::now();
                                stalled = 0;
                                if let Some(r) = change.revision() {
                                    next = Some(r + 1);
                                }
                                current_sent |= change == Change::Current;
                                if tx.send(change).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                if matches!(e, KvError::Incomplete { .. }) {
                                    // Read every value again; the receiver sees some twice.
                                    next = None;
                                }
                                tracing::debug!(bucket = bucket.name(), error = %bramble_base::error_chain(&e), "watch broke; resuming");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(bucket = bucket.name(), error = %bramble_base::error_chain(&e), "cannot watch; retrying");
                }
            }
            if tx.is_closed() {
                return;
            }
            tracing::debug!(
                bucket = bucket.name(),
                ?next,
                ?delay,
                "re-establishing the watch"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    });
    rx
}

/// Creates a stream, retrying for up to [`DEFAULT_TIMEOUT`] while JetStream answers "no
/// suitable peers" (10005): right after a cluster forms, the meta leader can count a peer as
/// offline for a moment (2.10.27 refused R3 buckets that way in the tests). Another board
/// creating the same stream at the same moment is not an error.
pub(crate) async fn create_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(), jetstream::context::CreateStreamError> {
    let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
    loop {
        let name = config.name.clone();
        match js.create_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                if js.get_stream(&name).await.is_ok() {
                    return Ok(());
                }
                let cause = jserr::cause(&e);
                let retry = matches!(
                    cause,
                    Cause::Code(jserr::NO_SUITABLE_PEERS | jserr::INSUFFICIENT_RESOURCES)
                ) || jserr::is_unavailable(cause);
                if !retry || tokio::time::Instant::now() > deadline {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Turns a KV watch into [`Change`]s. `expected`: the number of keys (subjects) the snapshot
/// must hold before [`Change::Current`] (`None`: a resumed watch, current from the start).
fn changes(
    bucket: String,
    watch: kv::Watch,
    expected: Option<u64>,
) -> impl Stream<Item = Result<Change, KvError>> + Send {
    let already_current = expected.is_none_or(|n| n == 0);
    let start: Vec<Result<Change, KvError>> = if already_current {
        vec![Ok(Change::Current)]
    } else {
        Vec::new()
    };
    let mut current_sent = already_current;
    let mut seen = std::collections::HashSet::new();
    let entries = watch.flat_map(move |item| {
        let mut out: Vec<Result<Change, KvError>> = Vec::with_capacity(2);
        match item {
            Ok(entry) => {
                let last = entry.delta == 0;
                if !current_sent {
                    seen.insert(entry.key.clone());
                }
                out.push(Ok(match entry.operation {
                    kv::Operation::Put => Change::Put {
                        key: entry.key,
                        value: entry.value,
                        revision: entry.revision,
                    },
                    kv::Operation::Delete | kv::Operation::Purge => Change::Delete {
                        key: entry.key,
                        revision: entry.revision,
                    },
                }));
                if !current_sent && last {
                    current_sent = true;
                    let expected = expected.unwrap_or(0);
                    if seen.len() as u64 >= expected {
                        out.push(Ok(Change::Current));
                    } else {
                        out.push(Err(KvError::Incomplete {
                            bucket: bucket.clone(),
                            seen: seen.len() as u64,
                            expected,
                        }));
                    }
                    seen = std::collections::HashSet::new();
                }
            }
            Err(e) => out.push(Err(nats(&bucket, "watching", e))),
        }
        futures::stream::iter(out)
    });
    futures::stream::iter(start).chain(entries)
}

/// Maps a failed request: no quorum, timeout, or the error itself.
fn classify<E>(bucket: &str, op: &'static str, e: E) -> KvError
where
    E: std::error::Error + Send + Sync + 'static,
{
    match jserr::cause(&e) {
        Cause::TimedOut => KvError::Timeout {
            bucket: bucket.to_owned(),
            waited: DEFAULT_TIMEOUT,
        },
        cause if jserr::is_unavailable(cause) => KvError::NoQuorum {
            bucket: bucket.to_owned(),
        },
        _ => nats(bucket, op, e),
    }
}

fn nats<E>(bucket: &str, op: &'static str, e: E) -> KvError
where
    E: std::error::Error + Send + Sync + 'static,
{
    KvError::Nats {
        bucket: bucket.to_owned(),
        op,
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_conventions() {
        let config = BucketConfig::new("boards", 3).stream_config();
        assert_eq!(config.name, "KV_boards");
        assert_eq!(config.subjects, vec!["$KV.boards.>".to_owned()]);
        assert_eq!(config.max_messages_per_subject, 1);
        assert!(config.allow_rollup && config.deny_delete && config.allow_direct);
        assert_eq!(config.discard, stream::DiscardPolicy::New);
        assert_eq!(config.num_replicas, 3);
        assert_eq!(config.duplicate_window, Duration::from_secs(120));
    }

    #[test]
    fn names() {
        for key in ["placer", "fn.default.hello", "a/b=c", "A-1_2"] {
            validate_name("key", key).unwrap();
        }
        for key in ["", ".a", "a.", "a..b", "a b", "a*", "a>", "ä"] {
            assert!(validate_name("key", key).is_err(), "{key:?}");
        }
        validate_name("bucket", "boards").unwrap();
        assert!(validate_name("bucket", "a.b").is_err());
    }

    #[test]
    fn conflict_messages_say_what_happened() {
        let create = KvError::Conflict {
            bucket: "b".into(),
            key: "k".into(),
            expected: None,
        };
        assert_eq!(
            create.to_string(),
            "b/k: another write came first (the key already exists)"
        );
        let update = KvError::Conflict {
            bucket: "b".into(),
            key: "k".into(),
            expected: Some(7),
        };
        assert!(
            update
                .to_string()
                .contains("revision 7 is no longer the latest")
        );
        assert!(update.is_conflict() && !update.is_unavailable());
        assert!(KvError::NoQuorum { bucket: "b".into() }.is_unavailable());
    }
}
